"""Node schemas as served by ComfyUI's ``GET /object_info``, parsed into typed objects.

The bundled snapshot (``lorawf/data/object_info``) is the real answer of ComfyUI 0.3.64 with
ComfyUI-FluxTrainer 639b3e8; a live server's answer can be loaded with :func:`parse_object_info`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from lorawf.errors import InputError

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
BUNDLED_FILES = ("fluxtrainer.json", "core-subset.json", "native.json")


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node: ``[TYPE]`` or ``[TYPE, {options}]`` in object_info."""

    name: str
    type: str  # INT, FLOAT, STRING, BOOLEAN, COMBO, or a link type such as IMAGE, JSON, NETWORKTRAINER, *
    required: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Any, ...] | None = None  # for COMBO inputs

    @property
    def is_widget(self) -> bool:
        """True when a literal value may be written (not a link-only socket or a forceInput widget)."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def minimum(self) -> float | None:
        value = self.options.get("min")
        return None if value is None else float(value)

    @property
    def maximum(self) -> float | None:
        value = self.options.get("max")
        return None if value is None else float(value)

    @property
    def default(self) -> Any:
        return self.options.get("default")

    def describe_range(self) -> str:
        """Human-readable allowed values, e.g. ``1..10000`` or ``one of 'a', 'b'``."""
        if self.choices is not None:
            shown = ", ".join(repr(c) for c in self.choices[:12])
            more = f", ... ({len(self.choices)} in all)" if len(self.choices) > 12 else ""
            return f"one of {shown}{more}" if self.choices else "no values (the list is empty on this server)"
        lo, hi = self.options.get("min"), self.options.get("max")
        if lo is not None and hi is not None:
            return f"{lo}..{hi}"
        if lo is not None:
            return f">= {lo}"
        if hi is not None:
            return f"<= {hi}"
        return f"any {self.type}"


@dataclass(frozen=True)
class NodeSchema:
    """What one ``class_type`` declares: inputs (required, optional, hidden) and outputs."""

    class_type: str
    inputs: Mapping[str, InputSpec]
    hidden: tuple[str, ...]
    output_types: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool
    display_name: str = ""

    def input(self, name: str) -> InputSpec | None:
        return self.inputs.get(name)

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.inputs.items() if s.required)


class SchemaSet(Mapping[str, NodeSchema]):
    """All node schemas of one server (or snapshot), keyed by ``class_type``."""

    def __init__(self, nodes: Mapping[str, NodeSchema], source: str = "") -> None:
        self._nodes = dict(nodes)
        self.source = source

    def __getitem__(self, key: str) -> NodeSchema:
        return self._nodes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def merged(self, other: SchemaSet) -> SchemaSet:
        """A new set with ``other``'s entries added (``other`` wins on a clash)."""
        return SchemaSet({**self._nodes, **other._nodes}, source=f"{self.source}+{other.source}")


def _parse_input(name: str, raw: Any, required: bool) -> InputSpec:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"input {name!r}: expected [TYPE, {{options}}], got {raw!r}")
    kind = raw[0]
    options = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
    if isinstance(kind, list):  # legacy combo: the list of allowed values
        return InputSpec(name, "COMBO", required, options, tuple(kind))
    if kind == "COMBO":  # V3 combo
        return InputSpec(name, "COMBO", required, options, tuple(options.get("options", ())))
    return InputSpec(name, str(kind), required, options)


def parse_node(class_type: str, raw: Mapping[str, Any]) -> NodeSchema:
    """Parse one ``/object_info`` entry."""
    declared = raw.get("input", {}) or {}
    inputs: dict[str, InputSpec] = {}
    for section, required in (("required", True), ("optional", False)):
        for name, spec in (declared.get(section) or {}).items():
            inputs[name] = _parse_input(name, spec, required)
    outputs = raw.get("output", []) or []
    return NodeSchema(
        class_type=class_type,
        inputs=inputs,
        hidden=tuple((declared.get("hidden") or {}).keys()),
        output_types=tuple(o if isinstance(o, str) else "COMBO" for o in outputs),
        output_names=tuple(raw.get("output_name", []) or []),
        output_node=bool(raw.get("output_node", False)),
        display_name=str(raw.get("display_name", "")),
    )


def parse_object_info(data: Any, source: str = "object_info") -> SchemaSet:
    """Parse a whole ``GET /object_info`` answer (a dict keyed by class_type)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object keyed by class_type, got {type(data).__name__}")
    nodes: dict[str, NodeSchema] = {}
    for class_type, raw in data.items():
        try:
            nodes[class_type] = parse_node(class_type, raw)
        except (ValueError, AttributeError, TypeError) as exc:
            raise InputError(f"{source}: node {class_type!r}: {exc}") from None
    return SchemaSet(nodes, source=source)


def load_object_info_file(path: Path) -> SchemaSet:
    """Load a saved object_info snapshot (as written by ``lorawf object-info -o FILE``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read object_info snapshot: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    return parse_object_info(data, source=str(path))


def bundled_object_info() -> dict[str, Any]:
    """The raw bundled snapshot: FluxTrainer's 32 nodes plus a core subset, as one dict."""
    merged: dict[str, Any] = {}
    base = resources.files("lorawf") / "data" / "object_info"
    for name in BUNDLED_FILES:
        merged.update(json.loads((base / name).read_text(encoding="utf-8")))
    return merged


@lru_cache(maxsize=1)
def bundled_schemas() -> SchemaSet:
    """Schemas of the recorded ComfyUI 0.3.64 + FluxTrainer 639b3e8 server (bundled snapshot)."""
    return parse_object_info(bundled_object_info(), source="bundled object_info (ComfyUI 0.3.64)")
