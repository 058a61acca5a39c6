"""Ctrl-C at any moment of a real `lorawf` process: one line, exit 130, our prompt gone, a true record.

Each test starts the project's test server and a real `lorawf` process, waits until the process is at the
moment under test (seen in the server's request log or in the --json stream), sends SIGINT and checks the
exit code, the output, the folder left behind and the server's queue.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]


class Process:
    """A `lorawf` process whose --json events are collected by a thread as they come."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
        env.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "2", "PYTHONPATH": str(REPO),
                    "XDG_CACHE_HOME": str(tmp / "cache")})
        self.proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, cwd=tmp, stdin=subprocess.DEVNULL)
        self.events: list[dict[str, Any]] = []
        self.stdout_lines: list[str] = []
        self.stderr_chunks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_chunks.append(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        err = "".join(self.stderr_chunks)
        raise AssertionError(f"never saw {what}; exit {self.proc.poll()}; stderr: {err[-2000:]}")

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        """Wait for the exit; the reader threads keep the pipes (communicate() would race them for stdout)."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(10)
        self._err_reader.join(10)
        return code, "".join(self.stderr_chunks)

    def progress(self, value: int) -> bool:
        return any(e.get("event") == "progress" and (e.get("overall_value") or 0) >= value for e in self.events)


def requests_to(server: Any, method: str, route: str) -> int:
    return sum(1 for r in server.requests() if r.method == method and r.path.endswith(route))


def assert_one_line(err: str) -> str:
    assert "Traceback" not in err and "CancelledError" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def assert_json_ended_cancelled(process: Process) -> None:
    assert process.events, "no --json output"
    done = process.events[-1]
    assert done["event"] == "done" and done["outcome"] == "cancelled" and done["exit_code"] == 130, done


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def leftovers(root: Path) -> list[str]:
    """Temporary files and empty folders: what a rerun would trip over or never clean up."""
    found = [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".part", ".etag"))]
    found += [str(p) for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
    return found


def queue_of(server: Any) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{server.url}/queue", timeout=10).json()
    return result


def ours_in_queue(server: Any, prompt_id: str) -> bool:
    queue = queue_of(server)
    return any(item[1] == prompt_id for key in ("queue_running", "queue_pending") for item in queue[key])


def start_run_on_server_dataset(server: Any, tmp: Path, out: Path) -> Process:
    """`lorawf run --json` of the example dataset, already in the server's dataset folder (no upload)."""
    dataset = server.root / "dataset" / "ink"
    shutil.copytree(DATASET, dataset)
    return Process(["run", "--images", "30", "--token", "ink", "--server", server.url,
                    "--server-dataset-path", str(dataset), "--download", str(out), "--json"], tmp)


def test_ctrl_c_during_the_upload(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.0002)
    server.control("stall", route="/upload/image", method="POST", seconds=30, count=1)
    out = tmp_path / "runs"
    process = Process(["run", str(DATASET), "--token", "ink", "--server", server.url, "--upload",
                       "--download", str(out), "--json"], tmp_path)
    process.wait_for("the first upload", lambda: requests_to(server, "POST", "/upload/image") >= 1)
    process.interrupt()
    code, err = process.finish(timeout=30)
    assert code == 130
    assert "cancelled" in assert_one_line(err)
    assert_json_ended_cancelled(process)
    record = json.loads((only_run_dir(out) / "run.json").read_text())
    assert record["outcome"] == "cancelled" and record["prompt_id"] is None
    assert requests_to(server, "POST", "/prompt") == 0
    assert leftovers(out) == []


def test_ctrl_c_twice_during_training_still_interrupts_our_prompt(comfy_server_factory: Any,
                                                                  tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.005)
    # the cancel's own request is slow, so the second Ctrl-C lands in the middle of it
    server.control("stall", route="/interrupt", method="POST", seconds=1.5, count=1)
    out = tmp_path / "runs"
    process = start_run_on_server_dataset(server, tmp_path, out)
    process.wait_for("training progress", lambda: process.progress(300))
    process.interrupt()
    process.wait_for("the cancel request", lambda: requests_to(server, "POST", "/interrupt") >= 1)
    process.interrupt()
    code, err = process.finish(timeout=60)
    assert code == 130, err[-3000:]
    assert "interrupted" in assert_one_line(err)
    assert_json_ended_cancelled(process)
    record = json.loads((only_run_dir(out) / "run.json").read_text())
    assert record["outcome"] == "cancelled"
    assert not ours_in_queue(server, record["prompt_id"])
    history = httpx.get(f"{server.url}/history/{record['prompt_id']}", timeout=10).json()[record["prompt_id"]]
    assert history["status"]["messages"][-1][0] == "execution_interrupted"
    assert any(f["kind"] == "checkpoint" and f["step"] == 250 for f in record["files"])
    assert leftovers(out) == []


def test_ctrl_c_during_the_downloads_then_resume_finishes_them(comfy_server_factory: Any,
                                                               tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.0002)
    server.control("stall", route="/view", method="GET", seconds=30, count=1)
    out = tmp_path / "runs"
    process = start_run_on_server_dataset(server, tmp_path, out)
    process.wait_for("the first download", lambda: requests_to(server, "GET", "/view") >= 1)
    process.interrupt()
    code, err = process.finish(timeout=30)
    assert code == 130, err[-3000:]
    assert_one_line(err)
    assert_json_ended_cancelled(process)
    run_dir = only_run_dir(out)
    record = json.loads((run_dir / "run.json").read_text())
    # the training succeeded on the server; the downloads did not finish: not a success, and it says why
    assert record["outcome"] == "cancelled" and "download" in record["error"]
    assert not ours_in_queue(server, record["prompt_id"])
    # a partial file (and the ETag that lets it resume safely) is resumed, nothing else: with downloads
    # overlapping, files other than the stalled one were cut mid-way
    assert [p for p in leftovers(out) if not p.endswith((".part", ".part.etag"))] == []
    resumed = subprocess.run([*CLI, "resume", str(run_dir)], check=False, capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
                             env={**{k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")},
                                  "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "success"
    assert leftovers(out) == []


@pytest.mark.parametrize("command", [["queue"], ["object-info", "-o", "schemas.json"]])
def test_ctrl_c_while_a_slow_server_answers(comfy_server_factory: Any, tmp_path: Path,
                                            command: list[str]) -> None:
    server = comfy_server_factory()
    route = "/queue" if command[0] == "queue" else "/object_info"
    server.control("stall", route=route, method="GET", seconds=30, count=5)
    process = Process([*command, "--server", server.url], tmp_path)
    process.wait_for("the request", lambda: requests_to(server, "GET", route) >= 1)
    process.interrupt()
    code, err = process.finish(timeout=20)
    assert code == 130
    assert "cancelled" in assert_one_line(err)
