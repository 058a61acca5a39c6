"""`lorawf run` as a user runs it: from a local folder of images to LoRA files on disk, against the fake server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorawf.timefmt import parse_iso
from lorawf.training.plan import plan_training

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]


def lorawf(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"LORAWF_POLL_INTERVAL": "0.3", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp / "cache")})
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp, stdin=subprocess.DEVNULL)


@pytest.fixture
def server(comfy_server_factory: Any) -> Any:
    return comfy_server_factory(step_delay=0.0002)


def uploads(server: Any) -> list[Any]:
    return [r for r in server.requests() if r.method == "POST" and r.path.endswith("/upload/image")]


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def test_run_uploads_trains_and_leaves_every_promised_file(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = lorawf("run", str(DATASET), "--token", "inkwash", "--server", server.url, "--upload",
                  "--download", str(out), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(out)
    name = run_dir.name
    assert name.startswith("inkwash-30img-")
    plan = plan_training(30)

    # every checkpoint the schedule promises, under FluxTrainer's names, plus the final LoRA
    expected = {f"{name}_rank16_bf16-step{s:05d}.safetensors" for s in plan.checkpoint_steps}
    expected.add(f"{name}_rank16_bf16.safetensors")
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == expected
    # and they are the server's bytes
    server_ckpt = server.root / "output" / "lorawf" / name / f"{name}_rank16_bf16-step00250.safetensors"
    assert (run_dir / "checkpoints" / server_ckpt.name).read_bytes() == server_ckpt.read_bytes()

    # one validation image per prompt per checkpoint
    validation = sorted(p.name for p in (run_dir / "validation").iterdir())
    assert len(validation) == 6 * len(plan.checkpoint_steps)
    assert "val_step01200_00006_.png" in validation

    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "success" and record["name"] == name
    assert record["plan"]["max_train_steps"] == 1200
    assert record["server"]["url"] == server.url and record["prompt_id"]
    assert any(op["path"].endswith("/max_train_steps") for op in record["patch"])
    files = {f["path"]: f for f in record["files"]}
    for entry in files.values():
        data = (run_dir / entry["path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert sum(1 for f in files.values() if f["kind"] == "checkpoint") == len(plan.checkpoint_steps)
    assert (run_dir / "contact_sheet.png").stat().st_size > 0

    # the dataset landed on the server under the names we checked, byte for byte
    uploaded = list((server.root / "input" / "lorawf" / "datasets").iterdir())
    assert len(uploaded) == 1
    assert (uploaded[0] / "ink_00.png").read_bytes() == (DATASET / "ink_00.png").read_bytes()
    assert (uploaded[0] / "ink_00.txt").read_text() == (DATASET / "ink_00.txt").read_text()
    workflow = json.loads((run_dir / "workflow.json").read_text())
    add = next(n for n in workflow.values() if n["class_type"] == "TrainDatasetAdd")
    assert add["inputs"]["dataset_path"] == str(uploaded[0])


def test_second_identical_upload_transfers_nothing(server: Any, tmp_path: Path) -> None:
    first = lorawf("run", str(DATASET), "--token", "inkwash", "--server", server.url, "--upload",
                   "--download", str(tmp_path / "a"), tmp=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(uploads(server)) == 30 + 24 + 1  # images, captions, manifest
    server.clear_requests()
    second = lorawf("run", str(DATASET), "--token", "inkwash", "--server", server.url, "--upload",
                    "--download", str(tmp_path / "b"), tmp=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert uploads(server) == []
    assert "0 sent, 54 already there" in second.stderr


def test_a_file_changed_on_the_server_is_sent_again(server: Any, tmp_path: Path) -> None:
    assert lorawf("run", str(DATASET), "--token", "ink", "--server", server.url, "--upload",
                  "--download", str(tmp_path / "a"), tmp=tmp_path).returncode == 0
    (folder,) = (server.root / "input" / "lorawf" / "datasets").iterdir()
    (folder / "ink_03.webp").write_bytes(b"truncated")
    server.clear_requests()
    proc = lorawf("run", str(DATASET), "--token", "ink", "--server", server.url, "--upload",
                  "--download", str(tmp_path / "b"), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(uploads(server)) == 2  # the damaged file, then the manifest
    assert (folder / "ink_03.webp").read_bytes() == (DATASET / "ink_03.webp").read_bytes()


@pytest.mark.parametrize("hostile", ['say"hi".png', "tab\there.png", "zero\u200bwidth.png"])
def test_hostile_dataset_names_are_refused_before_anything_is_sent(server: Any, tmp_path: Path,
                                                                    hostile: str) -> None:
    dataset = tmp_path / "ds"
    shutil.copytree(DATASET, dataset)
    (dataset / hostile).write_bytes((DATASET / "ink_00.png").read_bytes())
    proc = lorawf("run", str(dataset), "--token", "ink", "--server", server.url, "--upload",
                  "--download", str(tmp_path / "runs"), tmp=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "cannot be uploaded safely" in proc.stderr and "Traceback" not in proc.stderr
    assert uploads(server) == []
    assert not any(r.path.endswith("/prompt") and r.method == "POST" for r in server.requests())


def test_dropped_connection_mid_download_is_resumed(server: Any, tmp_path: Path) -> None:
    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    server.control("fail_next", route="/view", method="GET", mode="truncate", count=1)
    out = tmp_path / "runs"
    proc = lorawf("run", "--images", "30", "--token", "ink", "--server", server.url,
                  "--server-dataset-path", str(dataset), "--download", str(out), "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(e["schema"] == "lorawf.event/1" and "time" in e for e in events)
    assert any(e["event"] == "warning" and e["code"] == "download_retry" for e in events)
    resumed = [e for e in events if e["event"] == "download" and e["status"] == "resumed"]
    assert len(resumed) == 1, [(e.get("message"), e.get("status")) for e in events if e["event"] in ("download", "warning")][:2]
    assert any(r.header("Range") for r in server.requests() if r.path.endswith("/view"))
    run_dir = only_run_dir(out)
    local = Path(resumed[0]["path"])
    # downloads overlap: the cut one may be any output of the run (a checkpoint, a validation image)
    (server_file,) = [p for p in (server.root / "output").rglob(local.name) if run_dir.name in str(p)]
    assert local.read_bytes() == server_file.read_bytes()
    assert not list(run_dir.rglob("*.part"))
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "success"


def test_checkpoints_can_be_fetched_as_they_are_written(server: Any, tmp_path: Path) -> None:
    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    out = tmp_path / "runs"
    proc = lorawf("run", "--images", "15", "--token", "ink", "--server", server.url, "--server-dataset-path",
                  str(dataset), "--download", str(out), "--download-as-you-go", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(out)
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert len(checkpoints) == len(plan_training(15).checkpoint_steps) + 1
    fetched = [r.query for r in server.requests() if r.path.endswith("/view") and ".safetensors" in r.query]
    assert len(fetched) == len(checkpoints)  # each fetched once, as it was written; not again at the end


def test_a_failed_run_is_recorded_with_its_reason(server: Any, tmp_path: Path) -> None:
    empty = server.root / "dataset" / "empty"
    empty.mkdir(parents=True)
    out = tmp_path / "runs"
    proc = lorawf("run", "--images", "30", "--token", "ink", "--server", server.url, "--server-dataset-path",
                  str(empty), "--download", str(out), tmp=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "no image files found" in error_lines[0]
    record = json.loads((only_run_dir(out) / "run.json").read_text())
    assert record["outcome"] == "error" and "no image files found" in record["error"]
    assert record["prompt_id"]


def test_the_dataset_location_is_required(tmp_path: Path) -> None:
    proc = lorawf("run", str(DATASET), "--token", "ink", "--server", "http://127.0.0.1:9", tmp=tmp_path)
    assert proc.returncode == 2
    assert "--upload, or --server-dataset-path" in proc.stderr


def test_secrets_never_reach_the_record_or_the_output(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.0002, auth_token="s3cret-token-value")
    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    out = tmp_path / "runs"
    env_proc = subprocess.run(
        [*CLI, "run", "--images", "15", "--token", "ink", "--server", server.url, "--server-dataset-path",
         str(dataset), "--download", str(out), "--json"],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}, "PYTHONPATH": str(REPO),
             "LORAWF_TOKEN": "s3cret-token-value", "LORAWF_POLL_INTERVAL": "0.3",
             "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert env_proc.returncode == 0, env_proc.stderr[-2000:]
    assert "s3cret" not in env_proc.stdout + env_proc.stderr
    for path in out.rglob("*.json"):
        assert "s3cret" not in path.read_text()
    assert all(r.header("Authorization") == "Bearer s3cret-token-value" for r in server.requests()
               if not r.path.startswith("/__test__"))


def _start_run(server: Any, tmp_path: Path, out: Path) -> subprocess.Popen[str]:
    dataset = server.root / "dataset" / "ink"
    if not dataset.exists():
        shutil.copytree(DATASET, dataset)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "2", "PYTHONPATH": str(REPO),
                "XDG_CACHE_HOME": str(tmp_path / "cache")})
    return subprocess.Popen(
        [*CLI, "run", "--images", "30", "--token", "ink", "--server", server.url, "--server-dataset-path",
         str(dataset), "--download", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)


def _wait_for_progress(proc: subprocess.Popen[str], value: int) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and (event.get("overall_value") or 0) >= value:
            return event
    raise AssertionError(f"no progress event: {proc.stderr.read() if proc.stderr else ''}")


def test_ctrl_c_cancels_the_run_keeps_the_checkpoints_and_records_it(comfy_server_factory: Any,
                                                                     tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.005)
    out = tmp_path / "runs"
    proc = _start_run(server, tmp_path, out)
    _wait_for_progress(proc, 300)  # past the first checkpoint at 250
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    run_dir = only_run_dir(out)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "cancelled" and record["prompt_id"]
    assert any(f["kind"] == "checkpoint" and f["step"] == 250 for f in record["files"])
    history = httpx.get(f"{server.url}/history/{record['prompt_id']}").json()[record["prompt_id"]]
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_a_server_restart_mid_run_is_a_lost_prompt_not_a_hang(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.005)
    out = tmp_path / "runs"
    proc = _start_run(server, tmp_path, out)
    _wait_for_progress(proc, 100)
    server.control("restart")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "is lost: it is neither queued, running nor in the history" in line
    record = json.loads((only_run_dir(out) / "run.json").read_text())
    assert record["outcome"] == "lost" and record["error"]


def test_resume_after_the_terminal_went_away(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.002)
    out = tmp_path / "runs"
    proc = _start_run(server, tmp_path, out)
    first_progress = time.time()
    _wait_for_progress(proc, 300)
    proc.kill()  # a closed laptop: no cancel, the prompt goes on running on the server
    proc.wait(timeout=30)
    run_dir = only_run_dir(out)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "pending" and record["prompt_id"]

    time.sleep(0.5)
    resume_began = time.time()
    resumed = lorawf("resume", str(run_dir), "--json", tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "success"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "success"
    plan = plan_training(30)
    name = run_dir.name
    expected = {f"{name}_rank16_bf16-step{s:05d}.safetensors" for s in plan.checkpoint_steps}
    expected.add(f"{name}_rank16_bf16.safetensors")
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == expected
    assert len(list((run_dir / "validation").iterdir())) == 6 * len(plan.checkpoint_steps)
    assert (run_dir / "contact_sheet.png").exists()
    assert {f["path"] for f in record["files"]} >= {f"checkpoints/{n}" for n in expected}

    # the times are the server's: the start was before the resume, the running time the real one
    timings = record["timings"]
    history = httpx.get(f"{server.url}/history/{record['prompt_id']}").json()[record["prompt_id"]]
    stamps = dict(history["status"]["messages"])
    assert parse_iso(timings["started"]).timestamp() == stamps["execution_start"]["timestamp"] / 1000
    assert parse_iso(timings["finished"]).timestamp() == stamps["execution_success"]["timestamp"] / 1000
    assert parse_iso(timings["started"]).timestamp() < first_progress + 5 < resume_began + 5
    assert timings["running_seconds"] >= resume_began - first_progress - 1

    again = lorawf("resume", str(run_dir), tmp=tmp_path)  # nothing left to do, nothing duplicated
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == expected
    assert json.loads((run_dir / "run.json").read_text())["timings"] == timings  # never rewritten


def test_resume_needs_a_submitted_run(tmp_path: Path) -> None:
    from lorawf.runs.record import RunRecord, Timings, write_record
    from lorawf.timefmt import utc_now

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    write_record(run_dir, RunRecord(name="r", plan={}, patch=[], template="t", server_url="http://127.0.0.1:9",
                                    timings=Timings(created=utc_now())))
    proc = lorawf("resume", str(run_dir), tmp=tmp_path)
    assert proc.returncode == 3
    assert "never submitted" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_paths_map_to_downloads_or_to_a_warning() -> None:
    from lorawf.comfy.events import Output
    from lorawf.comfy.folders import ServerFolders
    from lorawf.runs.pipeline import OutputCollector

    collector = OutputCollector(ServerFolders("/srv/in", "/srv/out"))
    inside = collector(Output("p", node="9", key="text", role="checkpoint",
                              text="/srv/out/lorawf/r/x-step00250.safetensors"))
    outside = collector(Output("p", node="9", key="text", role="checkpoint", text="/elsewhere/x.safetensors"))
    assert [(ref.subfolder, ref.filename, role) for ref, role in collector.refs.values()] == [
        ("lorawf/r", "x-step00250.safetensors", "checkpoint")]
    assert inside == []
    assert [w.code for w in outside] == ["checkpoint_outside_output"]  # type: ignore[attr-defined]
