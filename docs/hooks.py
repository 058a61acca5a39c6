"""mkdocs hook: the command reference is generated from the click definitions before every build."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def on_pre_build(config: Any) -> None:
    spec = importlib.util.spec_from_file_location("commands_reference", HERE / "commands_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    if not module.PAGE.exists() or module.PAGE.read_text(encoding="utf-8") != text:
        module.PAGE.write_text(text, encoding="utf-8")
