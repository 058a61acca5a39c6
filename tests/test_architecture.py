"""The package's layers, as docs/design/architecture.md draws them, checked by import-linter with the contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([*LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_every_import_contract_is_kept() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "4 kept" in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("runs/engine.py", "import click", "click only in the command line"),
    ("comfy/events.py", "import lorawf.net.http", "Pure packages do no network I/O"),
    ("net/http.py", "import lorawf.runs.record", "Layers point down"),
    ("comfy/graph.py", "import lorawf.comfy.events", "No import cycles"),
])
def test_a_broken_layer_is_caught(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(ROOT / "lorawf", tmp_path / "lorawf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "lorawf" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    proc = lint(tmp_path)
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(contract in ln for ln in broken), proc.stdout


def test_every_command_is_found_in_the_module_the_cli_loads_for_it() -> None:
    """``lorawf X`` imports only X's module (COMMAND_MODULES): the table and the modules must agree."""
    import importlib

    from lorawf.cli import COMMAND_MODULES

    defined = {}
    for module in sorted(set(COMMAND_MODULES.values())):
        for command in importlib.import_module(f"lorawf.cli.{module}").COMMANDS:
            defined[command.name] = module
    assert defined == COMMAND_MODULES


def test_a_command_imports_only_its_own_module() -> None:
    code = ("import sys; from lorawf.cli import main; main.get_command(None, 'plan'); "
            "print(sorted(m for m in sys.modules if m.startswith('lorawf.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "lorawf.cli.offline" in out and "lorawf.cli.server" not in out and "lorawf.cli.sweep" not in out
