"""comfy-cli, the tool a ComfyUI user would otherwise call, installed into the benchmark's own venv.

It never goes into lorawf's environment: ``bench/.venv-comfy/`` is created on first use with
``python -m venv`` and ``pip install comfy-cli`` (from the package registry pip is configured for).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.harness import Skip

VENV = Path(__file__).resolve().parent / ".venv-comfy"


def comfy_executable(log: object = None) -> Path:
    """Path of the ``comfy`` script, installing comfy-cli first if needed; :class:`Skip` if that fails."""
    comfy = VENV / "bin" / "comfy"
    if comfy.is_file():
        return comfy
    say = getattr(log, "log", None)
    if say:
        say(f"installing comfy-cli into {VENV} (first run only)")
    python = VENV / "bin" / "python"
    try:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True,
                           timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "comfy-cli"], check=True,
                       capture_output=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise Skip(f"could not install comfy-cli into {VENV} (offline?): {tail[0]}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Skip(f"could not install comfy-cli into {VENV}: {exc}") from None
    if not comfy.is_file():
        raise Skip(f"comfy-cli installed but {comfy} is missing")
    return comfy
