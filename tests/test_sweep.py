"""``lorawf sweep`` against three instances of the test server: a fast and a slow FluxTrainer host and one
without FluxTrainer's nodes. Real processes, real ports; the sweep is the command line, as users run it."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorawf.comfy.schema import bundled_object_info

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "2", "LORAWF_SWEEP_POLL": "0.2",
                "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp / "cache"), **extra})
    return env


def lorawf(*args: str, tmp: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env=env_for(tmp, **extra), cwd=tmp, stdin=subprocess.DEVNULL)


class Started:
    """A lorawf process in the background, its output going to files (a pipe nobody reads would fill and
    stop it)."""

    def __init__(self, args: tuple[str, ...], tmp: Path, extra: dict[str, str]) -> None:
        self.out_path, self.err_path = tmp / "lorawf.out", tmp / "lorawf.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen([*CLI, *args], stdout=out, stderr=err, text=True,
                                            env=env_for(tmp, **extra), cwd=tmp, stdin=subprocess.DEVNULL)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        self.process.kill()

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def communicate(self, timeout: float) -> tuple[str, str]:
        self.process.wait(timeout=timeout)
        return self.out_path.read_text(encoding="utf-8"), self.err_path.read_text(encoding="utf-8")


def start_lorawf(*args: str, tmp: Path, **extra: str) -> Started:
    return Started(args, tmp, extra)


def small_dataset(root: Path, name: str, images: int) -> Path:
    """A copy of the example dataset cut to ``images`` images (with their captions)."""
    folder = root / name
    folder.mkdir(parents=True)
    chosen = sorted(p for p in DATASET.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:images]
    for image in chosen:
        shutil.copy(image, folder / image.name)
        caption = image.with_suffix(".txt")
        if caption.exists():
            shutil.copy(caption, folder / caption.name)
    return folder


def no_fluxtrainer() -> dict[str, Any]:
    return {k: v for k, v in bundled_object_info().items()
            if v.get("python_module") != "custom_nodes.ComfyUI-FluxTrainer"}


@pytest.fixture
def fleet(comfy_server_factory: Callable[..., Any]) -> dict[str, Any]:
    return {
        "fast": comfy_server_factory(step_delay=0.003),
        "slow": comfy_server_factory(step_delay=0.007),
        "bare": comfy_server_factory(object_info=no_fluxtrainer()),
    }


def write_sweep(tmp: Path, fleet: dict[str, Any], *, grid: str = 'lr = [1e-4, 4e-4]\ndim = [16, 32]',
                images: tuple[int, int] = (13, 15), servers: tuple[str, ...] = ("fast", "slow", "bare")) -> Path:
    small_dataset(tmp / "data", "inkwash", images[0])
    small_dataset(tmp / "data", "charcoal", images[1])
    server_tables = "".join(f'\n[[server]]\nname = "{name}"\nurl = "{fleet[name].url}"\n' for name in servers)
    text = f'''name = "styles"

[[dataset]]
folder = "data/inkwash"
token = "inkwash"

[[dataset]]
folder = "data/charcoal"
token = "charcoal"

[grid]
{grid}
{server_tables}'''
    path = tmp / "styles.toml"
    path.write_text(text, encoding="utf-8")
    return path


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def sweep_record(sweep_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    return data


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def server_times(run_dir: Path) -> tuple[datetime, datetime]:
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    timings = record["timings"]
    return datetime.fromisoformat(timings["started"].replace("Z", "+00:00")), \
        datetime.fromisoformat(timings["finished"].replace("Z", "+00:00"))


def our_prompts_on(server: Any) -> set[str]:
    queue = httpx.get(f"{server.url}/queue", timeout=10).json()
    return {item[1] for key in ("queue_running", "queue_pending") for item in queue[key]}


def assert_complete(sweep_dir: Path, record: dict[str, Any]) -> None:
    """Every run succeeded with every planned checkpoint on disk and a contact sheet; the page exists."""
    assert record["outcome"] == "success", record
    for run in record["runs"]:
        assert run["state"] == "success", run
        run_json = json.loads((sweep_dir / run["name"] / "run.json").read_text(encoding="utf-8"))
        assert run_json["outcome"] == "success"
        steps = set(run_json["plan"]["checkpoint_steps"]) - {run_json["plan"]["max_train_steps"]}
        found = {f["step"] for f in run_json["files"] if f["kind"] == "checkpoint"}
        assert steps <= found, (run["name"], steps, found)
        assert any(f["kind"] == "final_lora" for f in run_json["files"]), run["name"]
    assert (sweep_dir / "index.html").is_file()


# ------------------------------------------------------------------------------------------------ tests


def test_sweep_plan_lists_runs_plans_and_where_each_can_run(tmp_path: Path, fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet)
    proc = lorawf("sweep", "plan", str(path), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sweep styles: 8 runs" in out
    assert "inkwash-13img-lr4e-4-dim32" in out and "charcoal-15img-lr1e-4-dim16" in out
    assert out.count("can run on: fast, slow") == 8
    assert out.count("not on bare:") == 8 and "FluxTrainModelSelect" in out
    offline = lorawf("sweep", "plan", str(path), "--offline", "--json", tmp=tmp_path)
    assert offline.returncode == 0, offline.stderr
    data = json.loads(offline.stdout)
    assert [r["plan"]["max_train_steps"] for r in data["runs"]] == [520] * 4 + [600] * 4
    assert data["servers"] == []
    for server in fleet.values():  # nothing was uploaded or queued anywhere
        assert not [r for r in server.requests() if r.method == "POST" and not r.path.startswith("/__test__")]


def test_a_sweep_over_three_hosts_lands_every_run_on_a_capable_host_and_keeps_them_busy(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet)
    sweep_dir = tmp_path / "out"
    proc = lorawf("sweep", str(path), "--out", str(sweep_dir), "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = events_of(proc.stdout)
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "success"
    assert [e for e in events if e["event"] == "done"] == [events[-1]]  # one done, the sweep's
    assert all("run" in e and "host" in e for e in events)
    assert len([e for e in events if e["event"] == "run_done" and e["outcome"] == "success"]) == 8
    assert any(e["event"] == "host" and e["host"] == "bare" for e in events)
    record = sweep_record(sweep_dir)
    assert_complete(sweep_dir, record)
    hosts = [run["host"] for run in record["runs"]]
    assert set(hosts) == {"fast", "slow"} and hosts.count("fast") > hosts.count("slow")
    assert not [r for r in fleet["bare"].requests() if r.method == "POST" and r.path.endswith("/prompt")]
    # each dataset went to each host once, however many runs it had there
    for name in ("fast", "slow"):
        posts = [r for r in fleet[name].requests() if r.path.endswith("/upload/image")]
        files = len([p for p in (tmp_path / "data").rglob("*") if p.is_file()])
        assert len(posts) <= files + 2, (name, len(posts), files)  # + one manifest per dataset
    # the GPU never waited for lorawf: consecutive runs on a host start within 1 s of the previous end
    for name in ("fast", "slow"):
        spans = sorted(server_times(sweep_dir / run["name"]) for run in record["runs"] if run["host"] == name)
        gaps = [(later[0] - earlier[1]).total_seconds() for earlier, later in itertools.pairwise(spans)]
        assert all(gap <= 1.0 for gap in gaps), (name, gaps)
    # every existing command works on the run folders
    runs = lorawf("runs", str(sweep_dir), tmp=tmp_path)
    assert runs.returncode == 0 and all(run["name"] in runs.stdout for run in record["runs"]), runs.stderr


def test_a_host_that_dies_mid_run_has_its_runs_moved_and_the_sweep_completes(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet, grid="lr = [1e-4, 4e-4]", images=(13, 15))
    sweep_dir = tmp_path / "out"
    proc = start_lorawf("sweep", str(path), "--out", str(sweep_dir), "--json", tmp=tmp_path)

    def checkpoint_home_from_slow() -> bool:
        for run in sweep_record(sweep_dir)["runs"]:
            folder = sweep_dir / run["name"] / "checkpoints"
            if run["host"] == "slow" and run["state"] == "running" and folder.is_dir() and \
                    any(p.suffix == ".safetensors" for p in folder.iterdir()):
                return True
        return False

    try:
        wait_for(checkpoint_home_from_slow, what="a checkpoint of a run on the slow host on the local disk")
        victim = next(r["name"] for r in sweep_record(sweep_dir)["runs"]
                      if r["host"] == "slow" and r["state"] == "running")
        fleet["slow"].stop()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    record = sweep_record(sweep_dir)
    assert_complete(sweep_dir, record)
    moved = next(r for r in record["runs"] if r["name"] == victim)
    assert moved["host"] == "fast" and moved["from_step"] > 0
    assert moved["attempts"][0]["host"] == "slow" and moved["attempts"][0]["outcome"] == "lost"
    # it continued from its newest local checkpoint on the fast host: two segments, nothing trained twice
    run_json = json.loads((sweep_dir / victim / "run.json").read_text(encoding="utf-8"))
    first, second = run_json["segments"]
    assert first["outcome"] == "lost" and first["to_step"] == moved["from_step"] == second["from_step"]
    assert second["mode"] == "weights" and "moved from slow to fast" in second["note"]
    assert second["to_step"] == run_json["plan"]["max_train_steps"]
    log = fleet["fast"].state()["training_log"]
    assert any(entry.get("weights_from") for entry in log)
    events = events_of(out)
    assert any(e["event"] == "host" and e["host"] == "slow" and e["state"] == "down" for e in events)
    assert any(e["event"] == "placed" and e["run"] == victim and e["host"] == "fast" and e["from_step"] > 0
               for e in events)


def post_foreign_prompt(server: Any, steps: int = 400) -> str:
    """Another user's prompt on the host (the recorded fleet_dispatch workflow)."""
    prompt_id = str(uuid.uuid4())
    workflow = {"1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": steps, "delay": 0.05, "text": "other"}},
                "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "other"}}}
    r = httpx.post(f"{server.url}/prompt", json={"prompt": workflow, "client_id": "someone-else",
                                                  "prompt_id": prompt_id}, timeout=10)
    assert r.status_code == 200, r.text
    return prompt_id


def test_ctrl_c_cancels_only_our_prompts_and_sweep_resume_finishes_the_sweep(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet, servers=("fast", "slow"))
    sweep_dir = tmp_path / "out"
    fleet["slow"].control("state")
    proc = start_lorawf("sweep", str(path), "--out", str(sweep_dir), tmp=tmp_path)
    try:
        wait_for(lambda: sum(r["state"] in ("queued", "running") for r in sweep_record(sweep_dir)["runs"]) >= 3,
                 what="runs on the hosts' queues")
        other = post_foreign_prompt(fleet["fast"])
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    record = sweep_record(sweep_dir)
    assert record["outcome"] == "cancelled"
    assert {r["state"] for r in record["runs"]} <= {"success", "cancelled"}
    assert any(r["state"] == "cancelled" for r in record["runs"])
    ours = {r["prompt_id"] for r in record["runs"] if r["prompt_id"]}
    for name in ("fast", "slow"):
        assert not our_prompts_on(fleet[name]) & ours
    history = httpx.get(f"{fleet['fast'].url}/history/{other}", timeout=10).json()
    assert other in our_prompts_on(fleet["fast"]) or history[other]["status"]["status_str"] == "success"

    resumed = lorawf("sweep", "resume", str(sweep_dir), "--json", tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_complete(sweep_dir, sweep_record(sweep_dir))
    assert events_of(resumed.stdout)[-1]["event"] == "done"


def test_sweep_resume_after_a_closed_laptop_reattaches_to_running_prompts(
        tmp_path: Path, fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet, grid="lr = [1e-4, 4e-4]", servers=("fast", "slow"))
    sweep_dir = tmp_path / "out"
    proc = start_lorawf("sweep", str(path), "--out", str(sweep_dir), tmp=tmp_path)
    try:
        wait_for(lambda: any(r["state"] == "running" and r["step"] > 0 for r in sweep_record(sweep_dir)["runs"]),
                 what="a run training")
        proc.kill()  # the laptop lid: no chance to clean up
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {r["name"]: r["prompt_id"] for r in sweep_record(sweep_dir)["runs"] if r["state"] in ("queued", "running")}
    assert before
    resumed = lorawf("sweep", "resume", str(sweep_dir), tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = sweep_record(sweep_dir)
    assert_complete(sweep_dir, record)
    for run in record["runs"]:
        if run["name"] in before:  # followed, not queued again
            assert run["prompt_id"] == before[run["name"]] and not run["attempts"]


def test_a_run_that_fails_for_its_own_reasons_is_reported_not_retried(
        tmp_path: Path, comfy_server_factory: Callable[..., Any]) -> None:
    # the recorded 0-byte model files: the workflow passes every check, then InitFluxLoRATraining fails
    broken = {"fast": comfy_server_factory(models="empty", step_delay=0.001)}
    path = write_sweep(tmp_path, broken, grid="lr = [1e-4]", servers=("fast",))
    proc = lorawf("sweep", str(path), "--out", str(tmp_path / "out"), tmp=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    record = sweep_record(tmp_path / "out")
    assert record["outcome"] == "failed"
    for run in record["runs"]:
        assert run["state"] == "failed" and not run["attempts"] and run["error"], run
    posts = [r for r in broken["fast"].requests() if r.method == "POST" and r.path.endswith("/prompt")]
    assert len(posts) == 2  # one per run, none again
    assert "0 of 2 runs succeeded" in proc.stderr


def test_a_run_no_host_can_run_is_skipped_with_the_reason(tmp_path: Path, fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet, grid='set = ["101.transformer=missing.safetensors"]',
                       servers=("fast", "bare"))
    proc = lorawf("sweep", str(path), "--out", str(tmp_path / "out"), tmp=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    for run in sweep_record(tmp_path / "out")["runs"]:
        assert run["state"] == "skipped"
        assert "fast: " in run["error"] and "'missing.safetensors'" in run["error"]
        assert "bare: missing node types" in run["error"]
    assert not [r for r in fleet["fast"].requests() if r.method == "POST" and r.path.endswith("/prompt")]


def test_a_missing_token_variable_is_one_line_before_anything_is_created(tmp_path: Path,
                                                                        fleet: dict[str, Any]) -> None:
    path = write_sweep(tmp_path, fleet, servers=("fast",))
    path.write_text(path.read_text(encoding="utf-8") + 'token_env = "GPU_FAST_TOKEN"\n', encoding="utf-8")
    proc = lorawf("sweep", str(path), "--out", str(tmp_path / "out"), tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [("error: server fast: token_env names the environment variable GPU_FAST_TOKEN, which is not "
                     "set; export GPU_FAST_TOKEN=... before running")]
    assert not (tmp_path / "out").exists()
    assert not [r for r in fleet["fast"].requests() if not r.path.startswith("/__test__")]


def test_a_sweep_on_a_real_terminal_draws_one_line_per_run_and_an_overall_line(
        tmp_path: Path, comfy_server_factory: Callable[..., Any]) -> None:
    from tests.terminal import run_on_terminal

    token = "fleet-token-8d7c6b5a"
    servers = {"fast": comfy_server_factory(step_delay=0.004, auth_token=token),
               "slow": comfy_server_factory(step_delay=0.006, auth_token=token)}
    path = write_sweep(tmp_path, servers, grid="lr = [1e-4]", servers=("fast", "slow"))
    text = path.read_text(encoding="utf-8").replace('url = "', 'token_env = "FLEET_TOKEN"\nurl = "')
    path.write_text(text, encoding="utf-8")
    code, screen = run_on_terminal([*CLI, "sweep", str(path), "--out", str(tmp_path / "out")],
                                   env_for(tmp_path, FLEET_TOKEN=token), tmp_path, columns=72, timeout=180)
    assert code == 0, screen[-3000:]
    assert re.search(r"inkwash-13img @ (fast|slow) .*\d+/520  ETA", screen)
    assert re.search(r"sweep .*runs [01]/2 done  steps \d+/1120  ETA", screen)
    assert "sweep success: 2 of 2 runs succeeded" in screen
    block = [line for line in re.split(r"\r|\n|\x1b\[\d*[A-Za-z]", screen) if "ETA" in line]
    assert block and all(len(line) <= 71 for line in block)  # the live block fits; notices scroll and wrap
    assert token not in screen
    assert token not in (tmp_path / "out" / "sweep.json").read_text(encoding="utf-8")
    record = json.loads((tmp_path / "out" / "sweep.json").read_text(encoding="utf-8"))
    assert [s["token_env"] for s in record["servers"]] == ["FLEET_TOKEN", "FLEET_TOKEN"]


def test_a_host_that_goes_away_and_comes_back_gets_work_again(tmp_path: Path, fleet: dict[str, Any]) -> None:
    import threading

    # 12 runs, so that work is still waiting when the slow host is back (with 8 on a loaded machine the fast
    # host had sometimes been given all the rest during the downtime, and the test had nothing to see)
    path = write_sweep(tmp_path, fleet, grid="lr = [1e-4, 2e-4, 4e-4]\ndim = [16, 32]", servers=("fast", "slow"))
    sweep_dir = tmp_path / "out"
    proc = start_lorawf("sweep", str(path), "--out", str(sweep_dir), "--json", tmp=tmp_path)

    def restart() -> None:
        # forgets its queue and refuses connections for 4 s; the answer may be lost with the listener
        with contextlib.suppress(Exception):
            fleet["slow"].control("restart", downtime=4.0)

    try:
        wait_for(lambda: any(r["host"] == "slow" and r["state"] == "running" and r["step"] > 0
                             for r in sweep_record(sweep_dir)["runs"]), what="a run training on the slow host")
        threading.Thread(target=restart, daemon=True).start()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert_complete(sweep_dir, sweep_record(sweep_dir))
    events = events_of(out)
    down = next(i for i, e in enumerate(events) if e["event"] == "host" and e["host"] == "slow"
                and e["state"] == "down")
    back = next(i for i, e in enumerate(events) if i > down and e["event"] == "host" and e["host"] == "slow"
                and e["state"] == "up")
    assert any(e["event"] == "placed" and e["host"] == "slow" for e in events[back:]), "no work after it came back"
    assert any(a["host"] == "slow" and a["outcome"] == "lost"
               for r in sweep_record(sweep_dir)["runs"] for a in r["attempts"])
