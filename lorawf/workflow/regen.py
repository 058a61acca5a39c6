"""``lorawf regen``: regenerate committed workflow files from a TOML presets file, or check them for drift."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawf.errors import InputError
from lorawf.training.overrides import OVERRIDE_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_KEYS = {
    "name", "output", "template", "images", "token", "server_dataset_path", "checkpoint_dir", "output_name",
    "set", *(o.name for o in OVERRIDE_NAMES),
}


@dataclass(frozen=True)
class Preset:
    """One variant to generate: where it goes, from which template, with which plan and patch options."""

    name: str
    output: Path
    template: Path
    values: dict[str, Any]


def load_presets(path: Path) -> list[Preset]:
    """Parse the presets file; every problem names the file and the preset."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: presets file not found", hint="pass --presets FILE") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read presets file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    base = path.parent
    defaults = data.get("defaults", {})
    raw_presets = data.get("preset", [])
    if not isinstance(raw_presets, list) or not raw_presets:
        raise InputError(f"{path}: no [[preset]] tables found")
    presets: list[Preset] = []
    seen_outputs: set[Path] = set()
    for index, raw in enumerate(raw_presets, start=1):
        merged = {**defaults, **raw}
        name = str(merged.get("name") or f"#{index}")
        unknown = sorted(set(merged) - PRESET_KEYS)
        if unknown:
            raise InputError(f"{path}: preset {name}: unknown key(s) {', '.join(unknown)}")
        for key in ("output", "token", "images"):
            if key not in merged:
                raise InputError(f"{path}: preset {name}: missing required key {key!r}")
        output = (base / str(merged.pop("output"))).resolve()
        if output in seen_outputs:
            raise InputError(f"{path}: preset {name}: output {output} is written by another preset too")
        seen_outputs.add(output)
        template = merged.pop("template", None)
        template_path = (base / str(template)).resolve() if template else None
        from lorawf.workflow.templates import bundled_template_path

        presets.append(Preset(name, output, template_path or bundled_template_path(), merged))
    return presets


def short_diff(old: str, new: str, path: Path, limit: int = 20) -> str:
    """A unified diff cut to ``limit`` lines, for ``--check`` output."""
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{path} (committed)",
                                      f"{path} (regenerated)", lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)
