"""Pytest fixtures that run the fake ComfyUI server as a separate process on 127.0.0.1.

``comfy_server``  (function scope) a fresh server with default options.
``comfy_server_factory(**options)``  start more servers, or servers with options:

* ``auth_token="t"`` (requires ``Authorization: Bearer t``), or ``auth_header=..., auth_value=...``;
* ``object_info=<dict or path>`` served instead of the bundled snapshot (combo lists then stay as given);
* ``models="fake"|"empty"|"none"`` placeholder model files (``empty`` = the recorded 0-byte files,
  which make ``InitFluxLoRATraining`` fail as recorded);
* ``max_upload_size=<MB>`` like ComfyUI's ``--max-upload-size``; ``step_delay=<s>`` per training step;
* ``without_fluxtrainer=True``: a ComfyUI without the FluxTrainer node pack (no schemas, no nodes);
* ``native_progress=True``: ``TrainLoraNode`` sends a ``progress`` message per optimizer step, as ComfyUI after
  0.3.64 does (0.3.64 itself only prints tqdm to the console); also ``control("config", native_progress=...)``;
* ``tls=(cert, key)`` serves https/wss (ComfyUI's ``--tls-certfile``/``--tls-keyfile``);
* ``root=<Path>`` to reuse a ComfyUI folder (e.g. to "restart" on the same files);
* ``frontend_dir=<Path>`` serves that built ComfyUI frontend (a web root with ``index.html``) at ``/``,
  as ComfyUI does with ``--front-end-root`` (see :mod:`tests.comfy_server.frontend`).

The handle (:class:`ComfyServer`) offers ``.url``, ``.ws_url``, ``.port``, ``.root``,
``.control(kind, **params)``, ``.requests()``, ``.clear_requests()``, ``.state()``, ``.stop()``.

``.state()`` (``control("state")``) also gives ``restarts`` (how many ``control("restart")`` happened) and
``training_log``: one entry per ``FluxTrainLoop`` run in this server, kept across restarts (see
:func:`tests.comfy_server.flux_nodes.train_loop`), and per native ``TrainLoraNode`` run (``kind: "native"``, see
:func:`tests.comfy_server.native_nodes.train_lora`). A restart forgets memory (queue, history, ComfyUI's output
cache) but keeps the disk.
"""

from __future__ import annotations

import json
import os
import select
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received (HTTP or websocket handshake)."""

    method: str
    path: str
    query: str
    headers: httpx.Headers  # case-insensitive
    websocket: bool
    time: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class ComfyServer:
    """Handle of one running fake server process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, root: Path, log_path: Path,
                 tls_cert: Path | None = None) -> None:
        self.process = process
        self.port = port
        self.root = root
        self.log_path = log_path
        self.tls_cert = tls_cert
        scheme = "https" if tls_cert is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.ws_url = f"{'wss' if tls_cert is not None else 'ws'}://127.0.0.1:{port}"
        # the control helpers trust the test certificate
        self._verify: Any = ssl.create_default_context(cafile=str(tls_cert)) if tls_cert is not None else True

    def control(self, kind: str, **params: Any) -> dict[str, Any]:
        """POST ``/__test__/control`` (see :mod:`tests.comfy_server.faults` for the kinds)."""
        r = httpx.post(f"{self.url}/__test__/control", json={"kind": kind, **params}, timeout=30,
                       verify=self._verify)
        if r.status_code != 200:
            raise AssertionError(f"control {kind} failed: {r.status_code} {r.text}")
        result: dict[str, Any] = r.json()
        return result

    def state(self) -> dict[str, Any]:
        return self.control("state")

    def requests(self) -> list[RecordedRequest]:
        r = httpx.get(f"{self.url}/__test__/requests", timeout=30, verify=self._verify)
        r.raise_for_status()
        return [
            RecordedRequest(
                method=e["method"],
                path=e["path"],
                query=e["query"],
                headers=httpx.Headers([(k, v) for k, v in e["headers"]]),
                websocket=e["websocket"],
                time=e["time"],
            )
            for e in r.json()
        ]

    def clear_requests(self) -> None:
        httpx.delete(f"{self.url}/__test__/requests", timeout=30, verify=self._verify).raise_for_status()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server(root: Path, log_dir: Path | None = None, **options: Any) -> ComfyServer:
    """Start ``python -m tests.comfy_server`` and wait for its ``LISTENING <port>`` line."""
    root.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or root.parent
    args = [sys.executable, "-m", "tests.comfy_server", "--port", "0", "--root", str(root)]
    if options.get("auth_token") is not None:
        args += ["--auth-token", str(options["auth_token"])]
    if options.get("auth_value") is not None:
        args += ["--auth-value", str(options["auth_value"])]
    if options.get("auth_header") is not None:
        args += ["--auth-header", str(options["auth_header"])]
    object_info = options.get("object_info")
    if object_info is not None:
        if isinstance(object_info, (dict, list)):
            path = log_dir / f"object_info_{time.monotonic_ns()}.json"
            path.write_text(json.dumps(object_info), encoding="utf-8")
            object_info = path
        args += ["--object-info", str(object_info)]
    if options.get("models") is not None:
        args += ["--models", str(options["models"])]
    if options.get("max_upload_size") is not None:
        args += ["--max-upload-size", str(options["max_upload_size"])]
    if options.get("step_delay") is not None:
        args += ["--step-delay", str(options["step_delay"])]
    if options.get("native_progress"):
        args += ["--native-progress"]
    if options.get("without_fluxtrainer"):
        args += ["--without-fluxtrainer"]
    tls = options.get("tls")  # (certificate, key) paths: serve https/wss
    if tls is not None:
        args += ["--tls-certfile", str(tls[0]), "--tls-keyfile", str(tls[1])]
    if options.get("frontend_dir") is not None:
        args += ["--frontend", str(options["frontend_dir"])]
    unknown = set(options) - {
        "auth_token",
        "auth_value",
        "auth_header",
        "object_info",
        "models",
        "max_upload_size",
        "step_delay",
        "native_progress",
        "without_fluxtrainer",
        "tls",
        "frontend_dir",
    }
    if unknown:
        raise TypeError(f"unknown comfy server options: {sorted(unknown)}")
    for attempt in range(2):  # a process that dies before saying a word (seen once on a loaded CI box) is retried
        try:
            return _spawn(args, root, log_dir, tls)
        except _SilentDeath as exc:
            if attempt == 1:
                raise RuntimeError(str(exc)) from None
    raise AssertionError("unreachable")


class _SilentDeath(Exception):
    """The server process ended before printing anything or logging anything."""


def _spawn(args: list[str], root: Path, log_dir: Path, tls: Any) -> ComfyServer:
    log_path = log_dir / f"comfy_server_{time.monotonic_ns()}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log_file, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if line.startswith(b"LISTENING "):
                return ComfyServer(process, int(line.split()[1]), root, log_path,
                                   Path(tls[0]) if tls is not None else None)
            if not line:
                break
        elif process.poll() is not None:
            break
    process.kill()
    code = process.wait()
    log = log_path.read_text(errors="replace")
    message = f"fake ComfyUI server did not start (exit {code}): {line!r}\n{log}"
    if not line and not log.strip():
        raise _SilentDeath(message)
    raise RuntimeError(message)


@pytest.fixture
def comfy_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ComfyServer]]:
    started: list[ComfyServer] = []

    def factory(**options: Any) -> ComfyServer:
        root = options.pop("root", None)
        base = tmp_path_factory.mktemp("comfy")
        server = start_server(Path(root) if root is not None else base / "root", log_dir=base, **options)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def comfy_server(comfy_server_factory: Callable[..., ComfyServer]) -> ComfyServer:
    return comfy_server_factory()
