"""``lorawf regen``: regenerate committed workflow files from a TOML presets file, or check them for drift."""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawf.errors import InputError, LorawfError
from lorawf.printable import printable
from lorawf.training.families import FAMILIES
from lorawf.training.overrides import OVERRIDE_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_KEYS = {
    "name", "output", "template", "model", "images", "token", "server_dataset_path", "checkpoint_dir",
    "output_name", "set", *(o.name for o in OVERRIDE_NAMES),
}
TOP_LEVEL_KEYS = ("defaults", "preset")
_TEXT_KEYS = {"name": True, "output": True, "template": True,  # key -> must not be empty
              "token": False, "server_dataset_path": False, "checkpoint_dir": False, "output_name": False}
_OVERRIDE_TYPES = {o.name: o.type for o in OVERRIDE_NAMES}


@dataclass(frozen=True)
class Preset:
    """One variant to generate: where it goes, from which template, with which plan and patch options."""

    name: str
    output: Path
    template: Path
    values: dict[str, Any]


def load_presets(path: Path) -> list[Preset]:
    """Parse the presets file; every problem is one InputError naming the file, the preset and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: presets file not found", hint="pass --presets FILE") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read presets file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    defaults, raw_presets = _top_level(path, data)
    presets: list[Preset] = []
    seen_outputs: set[Path] = set()
    for index, raw in enumerate(raw_presets, start=1):
        merged = {**defaults, **raw}
        name = _preset_name(path, merged, index)
        _check_values(path, f"preset {name}", raw)
        for key in ("output", "token", "images"):
            if key not in merged:
                raise InputError(f"{path}: preset {name}: missing required key {key!r}")
        _check_plan(path, name, merged)
        output = (path.parent / str(merged.pop("output"))).resolve()
        if output in seen_outputs:
            raise InputError(f"{path}: preset {name}: output {output} is written by another preset too")
        seen_outputs.add(output)
        template = merged.pop("template", None)
        template_path = (path.parent / str(template)).resolve() if template else None
        from lorawf.workflow.templates import bundled_template_path

        presets.append(Preset(name, output, template_path or bundled_template_path(merged.get("model", "flux")),
                              merged))
    return presets


def _top_level(path: Path, data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``[defaults]`` table (checked) and the ``[[preset]]`` tables (each checked in turn)."""
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {', '.join(unknown)}",
                         hint="a presets file holds a [defaults] table and [[preset]] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InputError(f"{path}: defaults = {_shown(defaults)}: expected a [defaults] table of keys that "
                         "every preset shares")
    _check_values(path, "[defaults]", defaults)
    raw_presets = data.get("preset", [])
    if not isinstance(raw_presets, list) or not all(isinstance(p, dict) for p in raw_presets):
        raise InputError(f"{path}: preset = {_shown(raw_presets)}: expected [[preset]] tables, one per "
                         "workflow variant")
    if not raw_presets:
        raise InputError(f"{path}: no [[preset]] tables found")
    return defaults, raw_presets


def _preset_name(path: Path, raw: dict[str, Any], index: int) -> str:
    name = raw.get("name")
    if name is None:
        return f"#{index}"
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{path}: preset #{index}: name = {_shown(name)}: expected a non-empty string")
    return printable(name)


def _check_values(path: Path, where: str, table: dict[str, Any]) -> None:
    """Each key's type (and ``images``' range) in one ``[defaults]`` or ``[[preset]]`` table."""
    unknown = sorted(set(table) - PRESET_KEYS)
    if unknown:
        raise InputError(f"{path}: {where}: unknown key(s) {', '.join(printable(k) for k in unknown)}")
    for key, value in table.items():
        problem = _value_problem(key, value)
        if problem:
            raise InputError(f"{path}: {where}: {key} = {_shown(value)}: {problem}")


def _value_problem(key: str, value: Any) -> str | None:
    """What is wrong with one value, or None. TOML gives bool, int, float, str, lists, tables and dates."""
    if key in _TEXT_KEYS:
        if not isinstance(value, str):
            return "expected a string"
        return "expected a non-empty string" if _TEXT_KEYS[key] and not value.strip() else None
    if key == "model":
        return None if value in FAMILIES else f"expected one of {', '.join(repr(m) for m in FAMILIES)}"
    if key == "set":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return 'expected a list of "NODE.input=VALUE" strings, e.g. set = ["106.steps=12"]'
        return None
    if key == "images":
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected a whole number of training images, e.g. images = 43"
        return None if value >= 1 else "expected at least 1 image"
    wanted = _OVERRIDE_TYPES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected a whole number" if wanted is int else "expected a number"
    if wanted is int and isinstance(value, float):
        shown = f" (write {int(value)})" if value.is_integer() else ""
        return f"expected a whole number{shown}"
    return None


def _check_plan(path: Path, name: str, values: dict[str, Any]) -> None:
    """Ranges and combinations of the planning keys, named as the presets file writes them."""
    from lorawf.training.overrides import override_key
    from lorawf.training.plan import overrides_from_names, plan_training

    try:
        plan_training(values["images"], overrides_from_names(values), label=override_key)
    except LorawfError as exc:
        raise InputError(f"{path}: preset {name}: {exc}") from None


def _shown(value: Any, limit: int = 60) -> str:
    """A value as TOML writes it (``true``, ``"abc"``, ``["x"]``), shortened, with control characters escaped."""
    if isinstance(value, dict):
        return "a table"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return printable(text if len(text) <= limit else text[:limit] + "...")


def short_diff(old: str, new: str, path: Path, limit: int = 20) -> str:
    """A unified diff cut to ``limit`` lines, for ``--check`` output."""
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{path} (committed)",
                                      f"{path} (regenerated)", lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)
