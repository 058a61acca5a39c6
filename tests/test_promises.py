"""The promises on the failure paths (docs/guides/troubleshooting.md), each as a user or an attacker would meet it.

Real `lorawf` processes against the project's test server (a real process on 127.0.0.1); nothing mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorawf.runs.record import outcome_from_event

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]
UNREACHABLE = "http://127.0.0.1:9"


def lorawf(*args: str, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    base.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "2", "PYTHONPATH": str(REPO),
                 "XDG_CACHE_HOME": str(tmp / "cache"), **(env or {})})
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=300, env=base,
                          cwd=tmp, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure is one line on stderr, never a traceback or an internal error."""
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def last_event(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """``--json``: every stdout line is JSON and the last one is ``done`` with the process's exit code."""
    lines = proc.stdout.splitlines()
    assert lines, f"no --json output at all; stderr: {proc.stderr[-2000:]}"
    events = [json.loads(line) for line in lines]
    done: dict[str, Any] = events[-1]
    assert done["event"] == "done", events[-3:]
    assert done["exit_code"] == proc.returncode
    return done


@pytest.fixture
def server(comfy_server_factory: Any) -> Any:
    return comfy_server_factory(step_delay=0.0002)


def posted_prompts(server: Any) -> list[Any]:
    return [r for r in server.requests() if r.method == "POST" and r.path == "/prompt"]


def uploads(server: Any) -> list[Any]:
    return [r for r in server.requests() if r.method == "POST" and r.path.endswith("/upload/image")]


# ------------------------------------------------------------------ no input ends as an internal error


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["plan", "--images", "43", "--steps-per-image", "1e308"], 3, "--steps-per-image 1e+308 is out of range"),
    (["plan", "--images", "43", "--steps-per-image", "inf"], 3, "--steps-per-image inf"),
    (["queue", "--server", "http://[::1"], 2, "Invalid IPv6 URL"),
    (["queue", "--server", "http://gpu:99999"], 2, "Port out of range"),
    (["queue", "--server", "http://gpu box:8188"], 2, "spaces or control characters"),
    (["watch", "a\nb", "--server", UNREACHABLE], 2, "is not a prompt id"),
    (["cancel", "../../queue", "--server", UNREACHABLE], 2, "is not a prompt id"),
    (["watch", "abc", "--timeout", "-5", "--server", UNREACHABLE], 2, "greater than 0"),
    (["watch", "abc", "--timeout", "nan", "--server", UNREACHABLE], 2, "greater than 0"),
    (["submit", "wf.json", "--timeout", "0", "--server", UNREACHABLE], 2, "greater than 0"),
    (["run", "--images", "4", "--token", "ink", "--server-dataset-path", "/d", "--timeout", "inf",
      "--server", UNREACHABLE], 2, "greater than 0"),
])
def test_bad_numbers_and_urls_are_usage_or_input_errors(tmp_path: Path, args: list[str], code: int,
                                                        needle: str) -> None:
    proc = lorawf(*args, tmp=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert needle in one_error_line(proc)


# ------------------------------------------------------------------------ secrets where they enter


def test_a_token_pasted_with_a_trailing_cr_works_and_is_never_shown(comfy_server_factory: Any,
                                                                    tmp_path: Path) -> None:
    server = comfy_server_factory(auth_token="s3cret-token-value")
    proc = lorawf("queue", "--server", server.url, tmp=tmp_path, env={"LORAWF_TOKEN": "s3cret-token-value\r"})
    assert proc.returncode == 0, proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("env", "args", "names"), [
    ({"LORAWF_TOKEN": "s3cret\rtoken"}, [], "LORAWF_TOKEN"),
    ({"LORAWF_TOKEN": "s3cret\x1b]0;pwned\x07"}, [], "LORAWF_TOKEN"),
    ({"LORAWF_TOKEN": "s3cret-tökén"}, [], "LORAWF_TOKEN"),
    ({}, ["--header", "X-Api-Key: s3cret\r\nX-Evil: 1"], "--header X-Api-Key"),
    ({}, ["--header", "X-Api-Key: s3cret-ключ"], "--header X-Api-Key"),
    ({}, ["--header", "s3cret-bare-token"], "--header"),
])
def test_bad_secrets_are_usage_errors_that_never_echo_the_value(tmp_path: Path, env: dict[str, str],
                                                                args: list[str], names: str) -> None:
    for command in (["queue"], ["submit", "wf.json", "--json"], ["validate", "wf.json"]):
        proc = lorawf(*command, "--server", UNREACHABLE, *args, tmp=tmp_path, env=env)
        assert proc.returncode == 2, (command, proc.stderr)
        line = one_error_line(proc)
        assert names in line
        assert "s3cret" not in proc.stdout + proc.stderr


# ------------------------------------------------------------- --json: done also before a prompt exists


def write_workflow(tmp: Path, name: str, workflow: dict[str, Any]) -> Path:
    path = tmp / name
    path.write_text(json.dumps(workflow))
    return path


SLOW = {"1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": 2, "delay": 0.01, "text": "x"}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "p"}}}


def test_json_ends_with_done_when_preflight_refuses(server: Any, tmp_path: Path) -> None:
    bad = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    proc = lorawf("submit", str(write_workflow(tmp_path, "bad.json", bad)), "--server", server.url, "--json",
                  tmp=tmp_path)
    assert proc.returncode == 4
    assert last_event(proc)["outcome"] == "rejected"
    assert posted_prompts(server) == []


def test_json_ends_with_done_when_the_server_is_unreachable(tmp_path: Path) -> None:
    proc = lorawf("submit", str(write_workflow(tmp_path, "wf.json", SLOW)), "--server", UNREACHABLE, "--json",
                  tmp=tmp_path)
    assert proc.returncode == 5
    assert "cannot reach" in last_event(proc)["message"]


def test_json_ends_with_done_when_the_server_wants_a_token(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(auth_token="s3cret-token-value")
    proc = lorawf("submit", str(write_workflow(tmp_path, "wf.json", SLOW)), "--server", server.url, "--json",
                  tmp=tmp_path)
    assert proc.returncode == 5
    assert "401" in last_event(proc)["message"]


def test_json_ends_with_done_when_an_upload_is_refused(server: Any, tmp_path: Path) -> None:
    server.control("fail_next", route="/upload/image", method="POST", status=400, count=1000)
    out = tmp_path / "runs"
    proc = lorawf("run", str(DATASET), "--token", "ink", "--server", server.url, "--upload", "--download",
                  str(out), "--json", tmp=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    done = last_event(proc)
    assert "upload" in done["message"]
    assert posted_prompts(server) == []
    # the run folder tells the truth about it
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == outcome_from_event(done["outcome"]) == "error"
    assert "upload" in record["error"]


# -------------------------------------------------------- run checks its own options before anything


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--token", "q|b"], 3, "'|'"),
    (["--token", "ink", "--lr", "-1"], 3, "--lr -1 is out of range"),
    (["--token", "ink", "--dim", "0"], 3, "--dim 0 is out of range"),
    (["--token", "ink", "--set", "bad"], 3, "--set"),
    (["--token", "ink", "--set", "999.steps=3"], 3, "999"),
    (["--token", "ink", "--name", "../escape"], 3, "--name"),
    (["--token", "ink", "--name", "/tmp/abs-run"], 3, "--name"),
    (["--token", "ink", "--name", "two\nlines"], 3, "--name"),
    (["--token", "ink", "--name", "x" * 240], 3, "--name"),
    (["--token", "ink", "--template", "missing.json"], 3, "missing.json"),
])
def test_run_refuses_its_own_bad_options_before_anything_is_created_or_sent(
        server: Any, tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    out = tmp_path / "runs"
    proc = lorawf("run", str(DATASET), *args, "--server", server.url, "--upload", "--download", str(out),
                  tmp=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert needle in one_error_line(proc)
    assert not out.exists() and not Path("/tmp/abs-run").exists() and not (tmp_path / "escape").exists()
    assert uploads(server) == [] and posted_prompts(server) == []


def test_a_name_at_the_length_limit_still_trains_and_saves(server: Any, tmp_path: Path) -> None:
    from lorawf.training.naming import MAX_RUN_NAME

    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    out = tmp_path / "runs"
    name = "n" * MAX_RUN_NAME
    proc = lorawf("run", "--images", "30", "--token", "ink", "--server", server.url, "--server-dataset-path",
                  str(dataset), "--download", str(out), "--name", name, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checkpoints = list((out / name / "checkpoints").iterdir())
    assert checkpoints and all(len(p.name.encode()) <= 255 for p in checkpoints)


# ------------------------------------------------------------------------------- records tell the truth


def test_a_run_whose_downloads_failed_is_not_recorded_as_a_success(server: Any, tmp_path: Path) -> None:
    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    server.control("fail_next", route="/view", method="GET", status=404, count=100000)
    out = tmp_path / "runs"
    proc = lorawf("run", "--images", "30", "--token", "ink", "--server", server.url, "--server-dataset-path",
                  str(dataset), "--download", str(out), "--json", tmp=tmp_path)
    assert proc.returncode == 5, proc.stderr[-2000:]
    done = last_event(proc)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == outcome_from_event(done["outcome"]) != "success"
    listing = lorawf("runs", str(out), tmp=tmp_path)
    assert listing.returncode == 0 and "success" not in listing.stdout
