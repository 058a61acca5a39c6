"""`lorawf continue`: a run the server lost (a restart mid-run) is trained to its end from its newest checkpoint,
against the project's test server acting out FluxTrainer's resume behaviour (docs/fluxtrainer.md §5.6)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lorawf.training.families import FAMILIES
from lorawf.training.plan import plan_training
from lorawf.workflow.templates import bundled_template_path

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]


def environment(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "2", "PYTHONPATH": str(REPO),
                "XDG_CACHE_HOME": str(tmp / "cache")})
    return env


def start_run(server: Any, tmp: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    return subprocess.Popen([*CLI, "run", "--images", "30", "--token", "ink", "--server", server.url,
                             "--server-dataset-path", str(dataset), "--download", str(out), "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(tmp),
                            cwd=tmp, stdin=subprocess.DEVNULL)


def lose_the_run_after(server: Any, proc: subprocess.Popen[str], step: int) -> None:
    """Wait until the run passed ``step``, then restart the server: queue and history are gone."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and (event.get("overall_value") or 0) >= step:
            break
    server.control("restart")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err[-2000:]


def continue_run(run_dir: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "continue", str(run_dir), *extra], capture_output=True, text=True, timeout=300,
                          env=environment(tmp), cwd=tmp, stdin=subprocess.DEVNULL, check=False)


def continuing_until_it_trains(run_dir: Path, tmp: Path) -> subprocess.Popen[str]:
    """`lorawf continue --json`, returned once the continuation reports its first training step."""
    proc = subprocess.Popen([*CLI, "continue", str(run_dir), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment(tmp), cwd=tmp,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "progress":
            break
    return proc


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def trained(server: Any) -> list[tuple[int, int]]:
    """The (from, to) global step ranges the server's trainer really trained, in order."""
    return [(e["from_step"], e["to_step"]) for e in server.state()["training_log"]]


def template_of(family: str) -> tuple[str, ...]:
    """The `lorawf run` options that train ``family``: its bundled template (Flux's is the default)."""
    return () if family == "flux" else ("--template", str(bundled_template_path(family)))


@pytest.mark.parametrize("family", ["flux", "sdxl", "sd35"])
@pytest.mark.parametrize("mode", ["exact", "weights"])
def test_a_lost_run_is_continued_to_exactly_its_planned_checkpoints(comfy_server_factory: Any, tmp_path: Path,
                                                                   mode: str, family: str) -> None:
    server = comfy_server_factory(step_delay=0.004)
    out = tmp_path / "runs"
    proc = start_run(server, tmp_path, out, *(["--resumable"] if mode == "exact" else []), *template_of(family))
    at = random.randint(260, 1150)  # any step past the first checkpoint (250) and before the end (1200)
    print(f"the server is restarted at step {at}")
    lose_the_run_after(server, proc, at)
    run_dir = only_run_dir(out)
    assert json.loads((run_dir / "run.json").read_text())["outcome"] == "lost"

    done = continue_run(run_dir, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({mode})" in done.stderr
    if mode == "weights":  # the approximation is said, in the output and in the record
        assert "close to, not the same as" in done.stderr
        assert "close to, not the same as" in json.loads((run_dir / "run.json").read_text())["segments"][1]["note"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "success"
    plan = plan_training(30, model=family)
    assert record["plan"]["model"] == family
    name = run_dir.name
    steps = sorted(f["step"] for f in record["files"] if f["kind"] == "checkpoint")
    assert steps == list(plan.checkpoint_steps)  # every planned checkpoint, once, by the run's global step
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {
        FAMILIES[family].file_name(name, 16, s) for s in plan.checkpoint_steps}
    first, second = record["segments"]
    assert (first["mode"], first["from_step"], first["outcome"]) == ("initial", 0, "lost")
    assert (second["mode"], second["to_step"], second["outcome"]) == (mode, 1200, "success")
    assert second["from_step"] == first["to_step"] and second["from_step"] in plan.checkpoint_steps
    assert second["output_dir"].endswith("/segment-2") and second["started"]
    ranges = trained(server)
    if mode == "exact":  # the continuation starts where the saved state is: no step is trained twice
        resumed = [r for r in ranges if r[0] >= second["from_step"]]
        assert resumed[0][0] == second["from_step"] and resumed[-1][1] == 1200
    # the segment continues through the family's own nodes, and the server trained only that family
    segment = json.loads((run_dir / "workflow-segment-2.json").read_text())
    fam = FAMILIES[family]
    (init,) = [node for node in segment.values() if node["class_type"] == fam.init_class]
    (select,) = [node for node in segment.values() if node["class_type"] == fam.models_class]
    source = init["inputs"]["resume_args"] if mode == "exact" else select["inputs"]["lora_path"]
    assert segment[source[0]]["class_type"] == ("FluxTrainResume" if mode == "exact" else "PrimitiveString")
    assert {e["family"] for e in server.state()["training_log"]} == {family}


def test_nothing_to_continue_is_one_clear_line(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.0002)
    out = tmp_path / "runs"
    proc = start_run(server, tmp_path, out)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    done = continue_run(only_run_dir(out), tmp_path)
    assert done.returncode == 3
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {only_run_dir(out)}: the run succeeded; there is nothing to continue"]


def test_a_run_whose_prompt_is_alive_is_not_continued(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.01)
    out = tmp_path / "runs"
    proc = start_run(server, tmp_path, out)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "progress":
            break
    proc.kill()  # a closed laptop: the prompt goes on on the server
    proc.wait(timeout=30)
    time.sleep(0.2)
    done = continue_run(only_run_dir(out), tmp_path)
    assert done.returncode == 3 and "still queued or running" in done.stderr and "lorawf resume" in done.stderr


def test_a_continuation_followed_again_after_a_closed_laptop_still_ends_right(comfy_server_factory: Any,
                                                                              tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.004)
    out = tmp_path / "runs"
    lose_the_run_after(server, start_run(server, tmp_path, out, "--resumable"), 600)
    run_dir = only_run_dir(out)
    proc = continuing_until_it_trains(run_dir, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    resumed = subprocess.run([*CLI, "resume", str(run_dir)], capture_output=True, text=True, timeout=300,
                             env=environment(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "success" and record["segments"][-1]["outcome"] == "success"
    steps = sorted(f["step"] for f in record["files"] if f["kind"] == "checkpoint")
    assert steps == list(plan_training(30).checkpoint_steps)


@pytest.mark.parametrize("mode", ["exact", "weights"])
def test_run_auto_continue_waits_for_the_server_and_finishes_the_run(comfy_server_factory: Any,
                                                                     tmp_path: Path, mode: str) -> None:
    server = comfy_server_factory(step_delay=0.004)
    out = tmp_path / "runs"
    proc = start_run(server, tmp_path, out, *(["--resumable"] if mode == "exact" else []), "--auto-continue")
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress" and (events[-1].get("overall_value") or 0) >= 600:
            break
    # the server restarts and is not back at once: its first answers are cut connections
    server.control("fail_next", route="/system_stats", method="GET", mode="close", count=2)
    server.control("restart")
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    events += [json.loads(line) for line in rest.splitlines()]
    assert [e["event"] for e in events].count("done") == 1 and events[-1]["event"] == "done"
    assert events[-1]["outcome"] == "success"
    assert "continuing from the newest checkpoint (attempt 1 of 3)" in err
    assert "waiting for" in err and f"({mode})" in err
    record = json.loads((only_run_dir(out) / "run.json").read_text())
    assert record["outcome"] == "success" and [s["mode"] for s in record["segments"]] == ["initial", mode]
    steps = sorted(f["step"] for f in record["files"] if f["kind"] == "checkpoint")
    assert steps == list(plan_training(30).checkpoint_steps)


def test_ctrl_c_during_a_continuation_cancels_only_its_own_prompt(comfy_server_factory: Any,
                                                                  tmp_path: Path) -> None:
    import signal

    import httpx

    server = comfy_server_factory(step_delay=0.006)
    out = tmp_path / "runs"
    lose_the_run_after(server, start_run(server, tmp_path, out, "--resumable"), 300)
    run_dir = only_run_dir(out)
    # someone else's prompt waits in the queue behind ours
    other = {"1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": 2, "delay": 0.01, "text": "x"}},
             "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "other"}}}
    proc = continuing_until_it_trains(run_dir, tmp_path)
    theirs = httpx.post(f"{server.url}/prompt", json={"prompt": other}, timeout=10).json()["prompt_id"]
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    record = json.loads((run_dir / "run.json").read_text())
    ours = record["segments"][-1]["prompt_id"]
    assert record["outcome"] == "cancelled" and record["segments"][-1]["outcome"] == "cancelled"
    history = httpx.get(f"{server.url}/history/{ours}", timeout=10).json()[ours]
    assert history["status"]["messages"][-1][0] == "execution_interrupted"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not httpx.get(f"{server.url}/history/{theirs}", timeout=10).json():
        time.sleep(0.2)
    assert httpx.get(f"{server.url}/history/{theirs}", timeout=10).json()[theirs]["status"]["status_str"] == \
        "success"  # theirs was neither deleted nor interrupted
