"""Helpers for the server cases: start the bench server, check for curl and the client, make workflows."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Skip


def require_server_modules() -> None:
    """:class:`Skip` unless the client and the test server this case measures are importable."""
    for module in ("lorawf.net.http", "tests.comfy_server.app"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise Skip(f"{module} is not available in this checkout")


def require_curl() -> str:
    """Path of curl, or :class:`Skip`."""
    curl = shutil.which("curl")
    if not curl:
        raise Skip("curl is not installed (apt-get install curl)")
    return curl


def bench_env() -> dict[str, str]:
    """Environment for child processes: the checkout on ``PYTHONPATH`` (for ``bench`` and ``tests``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("LORAWF_SERVER", None)
    env.pop("LORAWF_TOKEN", None)
    return env


@dataclass
class RunningServer:
    """A started ``bench.server`` process."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: dict[str, Any], timeout: float = 600.0) -> Any:
        """POST JSON, return the decoded answer."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def get(self, path: str, timeout: float = 30.0) -> Any:
        """GET, return the decoded JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())


@contextmanager
def bench_server(root: Path, *, worker: bool = False) -> Iterator[RunningServer]:
    """Start ``python -m bench.server --root ROOT`` and stop it (SIGTERM, then kill) on exit."""
    require_server_modules()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.server", "--root", str(root)] + (["--worker"] if worker else [])
    with _listening(cmd, "bench server") as (proc, port):
        yield RunningServer(proc, port, root)


@dataclass(frozen=True)
class Shape:
    """A shaped link (:mod:`bench.link`): one-way delay and bandwidth per direction."""

    delay_ms: float = 25.0
    mbit: float = 100.0

    @property
    def rtt(self) -> float:
        return 2 * self.delay_ms / 1000

    @property
    def bytes_per_second(self) -> float:
        return self.mbit * 1e6 / 8

    def describe(self) -> str:
        return f"{2 * self.delay_ms:g} ms RTT, {self.mbit:g} Mbit/s"


@contextmanager
def shaped_link(server: RunningServer, shape: Shape) -> Iterator[str]:
    """Start ``python -m bench.link`` in front of ``server``; yields the URL to use instead of the server's."""
    cmd = [sys.executable, "-m", "bench.link", "--upstream", str(server.port), "--delay-ms", str(shape.delay_ms),
           "--mbit", str(shape.mbit)]
    with _listening(cmd, "shaped link") as (_, port):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def _listening(cmd: list[str], what: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start a process that prints ``LISTENING <port>``; stop it (SIGTERM, then kill) on exit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=bench_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"{what} did not start (said {line!r}, exit {proc.poll()})")
        yield proc, int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def training_workflow() -> dict[str, Any]:
    """The bundled template planned for 43 images and patched, as ``lorawf patch`` would write it."""
    from lorawf.workflow.build import build_workflow
    from lorawf.workflow.patch import PatchOptions

    options = PatchOptions("inkwash", "/data/inkwash", "/data/out", None, ())
    return dict(build_workflow(43, options).patch.workflow)


def loop_nodes(workflow: dict[str, Any]) -> list[tuple[str, int]]:
    """``(node id, steps)`` of every training loop, in run order."""
    from lorawf.comfy.events import RunState

    state = RunState("x", workflow)
    return [(node, int(info.steps or 1)) for node, info in state.loops.items()]


def wait_until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
