"""https/wss: certificates verified by default, --ca-bundle for a private CA, --insecure only when asked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(comfy_server_factory: Any, certificate: tuple[Path, Path]) -> Any:
    return comfy_server_factory(tls=certificate)


def workflow(tmp_path: Path) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": 3, "delay": 0.01, "text": "tls"}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "tls"}},
    }))
    return path


def lorawf(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAWF_", "SSL_CERT"))}
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache"), "LORAWF_POLL_INTERVAL": "0.3"})
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_an_unknown_certificate_is_refused_with_a_hint(tls_server: Any, tmp_path: Path) -> None:
    proc = lorawf(tmp_path, "submit", str(workflow(tmp_path)), "--server", tls_server.url)
    assert proc.returncode == 5, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "TLS" in line or "CERTIFICATE" in line.upper()
    assert "--ca-bundle" in line
    assert not any(r.method == "POST" for r in tls_server.requests() if r.path.endswith("/prompt"))


def test_ca_bundle_runs_over_https_and_wss_and_downloads(tls_server: Any, certificate: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    proc = lorawf(tmp_path, "submit", str(workflow(tmp_path)), "--server", tls_server.url,
                  "--ca-bundle", str(certificate[0]), "--json", "--download", str(dest))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["outcome"] == "success"
    assert any(e["event"] == "progress" for e in events)  # live events arrived over wss
    assert [p.read_text() for p in dest.rglob("*.txt")] == ["tls: finished 3 steps"]
    assert any(r.websocket for r in tls_server.requests())


def test_insecure_must_be_asked_for(tls_server: Any, tmp_path: Path) -> None:
    proc = lorawf(tmp_path, "submit", str(workflow(tmp_path)), "--server", tls_server.url, "--insecure")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("trust", ["ca-bundle", "none"])
def test_submit_no_wait_takes_the_one_connection_client_over_https_too(tls_server: Any, certificate: Any,
                                                                        tmp_path: Path, trust: str) -> None:
    args = ["--ca-bundle", str(certificate[0])] if trust == "ca-bundle" else []
    proc = lorawf(tmp_path, "submit", str(workflow(tmp_path)), "--server", tls_server.url, "--no-wait", *args)
    if trust == "none":  # the same refusal, and the same hint, as the full client's
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert proc.returncode == 5 and "TLS" in line and "--ca-bundle" in line
        assert not any(r.path.endswith("/prompt") for r in tls_server.requests())
        return
    assert proc.returncode == 0, proc.stderr
    state = tls_server.state()
    assert proc.stdout.strip() in state["queue_pending"] + state["queue_running"] + state["history"]
    assert not any(r.websocket for r in tls_server.requests())
