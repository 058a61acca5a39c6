"""Convert a ComfyUI web-UI workflow (``nodes`` + ``links`` + ``widgets_values``) to API format.

What the conversion does, in the order the web UI's own "Save (API)" does it:

* ``widgets_values`` are mapped onto the node's widget inputs in schema order (required, then
  optional). The ``control_after_generate`` value that follows a seed-like INT (``seed``,
  ``noise_seed``, or an input declaring ``control_after_generate``) is skipped, as is the upload
  button value after an ``image_upload`` combo. A ``forceInput`` input has a slot only when the UI
  node shows it as a converted widget. A widget converted to an input keeps its slot; when that
  input is linked, the link wins.
* Links are resolved through ``Reroute`` nodes, KJNodes ``SetNode``/``GetNode`` pairs (matched by
  name) and UI-only ``PrimitiveNode`` nodes (whose value becomes a literal).
* Muted nodes (mode 2) are dropped, and links from them vanish. Bypassed nodes (mode 4) are passed
  through: an input linked to one is linked to what feeds the bypassed node's input of the same type.
* ``_meta.title`` is the node's title, or the schema's display name.
* UI-only nodes (notes, reroutes, primitives, set/get) are left out; groups are not nodes at all.
* A class_type unknown to the schemas is kept with its linked inputs only (its widget values cannot
  be named), so that validation reports it. ``drop_unknown=True`` (for a server without the
  display/helper packs, e.g. KJNodes and rgthree for the upstream examples) removes it instead,
  together with everything that needs it through a required input, and drops optional inputs fed by
  it; KJNodes constants (``StringConstant``, ``StringConstantMultiline`` without newlines,
  ``INTConstant``, ``FloatConstant``) that the server lacks are inlined as literal values first.

Stale values (``fix_stale=True``, off by default): workflows saved with older node versions carry
values that the current nodes no longer accept. :data:`STALE_FIXES` lists each fix; every one that
is applied is recorded in :attr:`Conversion.notes`:

* ``InitFluxLoRATraining.blocks_to_swap`` holding a boolean (the old ``split_mode`` slot):
  ``false`` → ``0``, ``true`` → ``18`` (the tooltip's "default to enable");
* ``gradient_checkpointing`` holding a boolean (before the combo of FluxTrainer 299a994):
  ``true`` → ``"enabled"``, ``false`` → ``"disabled"``;
* ``OptimizerConfigProdigyPlusScheduleFree`` with 14 widget values (saved before ``use_orthograd``
  and ``"use_focus "`` existed): the values are mapped onto the old layout and the two new inputs
  get their schema defaults.

``model_overrides`` replaces model file names: keys are an input name (``"transformer"``, applies to
every node with that input) or ``"<node id>.<input>"``. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lorawf.comfy.schema import InputSpec, NodeSchema, SchemaSet
from lorawf.errors import WorkflowFormatError

__all__ = [
    "CONTROL_VALUES",
    "STALE_FIXES",
    "UI_ONLY_TYPES",
    "Conversion",
    "convert_ui",
    "ui_to_api",
    "widget_names",
]

MODE_MUTED = 2
MODE_BYPASSED = 4
UI_ONLY_TYPES = frozenset({
    "Note", "MarkdownNote", "Reroute", "PrimitiveNode", "SetNode", "GetNode",
    "Label (rgthree)", "Bookmark (rgthree)", "Fast Groups Muter (rgthree)", "Fast Groups Bypasser (rgthree)",
})
INLINE_CONSTANTS = frozenset({"StringConstant", "StringConstantMultiline", "INTConstant", "FloatConstant"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
SEED_NAMES = frozenset({"seed", "noise_seed"})


@dataclass
class Conversion:
    """The converted API workflow plus what the conversion had to decide on the way."""

    workflow: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # UI node ids left out (muted, unknown, ...)


# --- UI graph access ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    origin: str
    slot: int
    type: str


def _parse_links(ui: Mapping[str, Any]) -> dict[Any, _Link]:
    links: dict[Any, _Link] = {}
    for raw in ui.get("links") or []:
        if isinstance(raw, list) and len(raw) >= 5:
            links[raw[0]] = _Link(str(raw[1]), int(raw[2]), str(raw[5]) if len(raw) > 5 else "*")
        elif isinstance(raw, Mapping) and "id" in raw:
            links[raw["id"]] = _Link(str(raw.get("origin_id")), int(raw.get("origin_slot", 0)), str(raw.get("type", "*")))
    return links


def _check_supported(ui: Mapping[str, Any]) -> None:
    subgraphs = (ui.get("definitions") or {}).get("subgraphs") if isinstance(ui.get("definitions"), Mapping) else None
    ids = {str(s.get("id")) for s in subgraphs or [] if isinstance(s, Mapping)}
    for node in ui.get("nodes") or []:
        node_type = str(node.get("type", ""))
        if node_type in ids:
            raise WorkflowFormatError(
                f"node {node.get('id')} is a subgraph; lorawf cannot convert subgraphs",
                hint="unpack the subgraph in the web UI, or export with 'Save (API)'",
            )
        if node_type.startswith(("workflow>", "workflow/")):
            raise WorkflowFormatError(
                f"node {node.get('id')} is a group node ({node_type}); lorawf cannot convert group nodes",
                hint="convert it back to nodes in the web UI, or export with 'Save (API)'",
            )


# --- widget layout ------------------------------------------------------------------------------


def _is_seed_like(spec: InputSpec) -> bool:
    return spec.type == "INT" and (spec.name in SEED_NAMES or bool(spec.options.get("control_after_generate")))


def widget_names(schema: NodeSchema, converted: frozenset[str] = frozenset()) -> list[str]:
    """Input names in the order of their ``widgets_values`` slots (``converted``: forceInput widgets shown)."""
    names = []
    for name, spec in schema.inputs.items():
        if spec.type not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            continue
        if spec.options.get("forceInput") and name not in converted:
            continue
        names.append(name)
    return names


def _map_widgets(
    schema: NodeSchema, values: Any, converted: frozenset[str], names: list[str] | None = None
) -> tuple[dict[str, Any], int]:
    """Map widget values to input names; returns the mapping and the number of values not used."""
    names = widget_names(schema, converted) if names is None else names
    if isinstance(values, Mapping):  # some frontends save widgets_values as an object
        return {n: values[n] for n in names if n in values}, len([k for k in values if k not in names])
    values = list(values or [])
    out: dict[str, Any] = {}
    i = 0
    for name in names:
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        spec = schema.inputs[name]
        control = _is_seed_like(spec) and i < len(values) and values[i] in CONTROL_VALUES
        upload = bool(spec.options.get("image_upload")) and i < len(values) and values[i] in ("image", None)
        if control or upload:
            i += 1
    return out, len(values) - i


# --- stale values -------------------------------------------------------------------------------

StaleFix = Callable[[str, NodeSchema, Mapping[str, Any], dict[str, Any]], "str | None"]


def _fix_blocks_to_swap(node_id: str, schema: NodeSchema, ui_node: Mapping[str, Any], inputs: dict[str, Any]) -> str | None:
    value = inputs.get("blocks_to_swap")
    if isinstance(value, bool):
        inputs["blocks_to_swap"] = 18 if value else 0
        return (f"node {node_id} {schema.class_type}: blocks_to_swap {str(value).lower()} (old split_mode slot) "
                f"-> {inputs['blocks_to_swap']}")
    return None


def _fix_gradient_checkpointing(
    node_id: str, schema: NodeSchema, ui_node: Mapping[str, Any], inputs: dict[str, Any]
) -> str | None:
    value = inputs.get("gradient_checkpointing")
    spec = schema.input("gradient_checkpointing")
    if isinstance(value, bool) and spec is not None and spec.choices:
        inputs["gradient_checkpointing"] = "enabled" if value else "disabled"
        return (f"node {node_id} {schema.class_type}: gradient_checkpointing {str(value).lower()} (old boolean) "
                f"-> {inputs['gradient_checkpointing']!r}")
    return None


_PPSF_NEW = ("use_orthograd", "use_focus ")


def _fix_ppsf_layout(node_id: str, schema: NodeSchema, ui_node: Mapping[str, Any], inputs: dict[str, Any]) -> str | None:
    values = ui_node.get("widgets_values")
    names = widget_names(schema)
    if not isinstance(values, list) or len(values) != len(names) - len(_PPSF_NEW):
        return None
    old_names = [n for n in names if n not in _PPSF_NEW]
    mapped, _ = _map_widgets(schema, values, frozenset(), old_names)
    for name in list(inputs):
        if name in names:
            del inputs[name]
    for name in names:
        if name in mapped:
            inputs[name] = mapped[name]
        elif name in _PPSF_NEW:
            inputs[name] = schema.inputs[name].default
    return (f"node {node_id} {schema.class_type}: {len(values)} widget values saved before use_orthograd and "
            f"'use_focus ' existed; mapped onto the old layout, the two new inputs get their defaults")


STALE_FIXES: dict[str, tuple[StaleFix, ...]] = {
    "InitFluxLoRATraining": (_fix_blocks_to_swap, _fix_gradient_checkpointing),
    "InitSDXLLoRATraining": (_fix_gradient_checkpointing,),
    "InitSD3LoRATraining": (_fix_gradient_checkpointing,),
    "OptimizerConfigProdigyPlusScheduleFree": (_fix_ppsf_layout,),
}


# --- the conversion -----------------------------------------------------------------------------


class _Graph:
    def __init__(self, ui: Mapping[str, Any], inline: frozenset[str] = frozenset()) -> None:
        self.inline = inline
        self.nodes: dict[str, Mapping[str, Any]] = {}
        for node in ui.get("nodes") or []:
            if isinstance(node, Mapping) and "id" in node:
                self.nodes[str(node["id"])] = node
        self.links = _parse_links(ui)
        self.setters: dict[str, str] = {}
        for nid, node in self.nodes.items():
            if node.get("type") == "SetNode" and node.get("mode", 0) != MODE_MUTED:
                name = _first(node.get("widgets_values"))
                if isinstance(name, str):
                    self.setters.setdefault(name, nid)

    def input_link(self, node: Mapping[str, Any], index: int) -> _Link | None:
        inputs = node.get("inputs") or []
        if 0 <= index < len(inputs):
            return self.links.get(inputs[index].get("link"))
        return None

    def resolve(self, link: _Link | None, want_type: str, depth: int = 0) -> tuple[str, Any] | None:
        """Follow ``link`` to a real source: ``("link", [id, slot])``, ``("value", v)`` or ``None``."""
        if link is None or depth > 100:
            return None
        node = self.nodes.get(link.origin)
        if node is None:
            return None
        mode = node.get("mode", 0)
        node_type = node.get("type")
        if mode == MODE_MUTED:
            return None
        if node_type == "Reroute" or node_type == "SetNode":
            return self.resolve(self.input_link(node, 0), want_type, depth + 1)
        if node_type == "GetNode":
            setter = self.setters.get(_first(node.get("widgets_values")))
            return self.resolve(self.input_link(self.nodes[setter], 0), want_type, depth + 1) if setter else None
        if node_type == "PrimitiveNode":
            return ("value", _first(node.get("widgets_values")))
        if node_type in self.inline:
            return ("value", _first(node.get("widgets_values")))
        if mode == MODE_BYPASSED:
            inputs = node.get("inputs") or []
            order = [link.slot] + [i for i in range(len(inputs)) if i != link.slot]
            for i in order:
                if 0 <= i < len(inputs) and inputs[i].get("type") == want_type and inputs[i].get("link") is not None:
                    return self.resolve(self.links.get(inputs[i]["link"]), want_type, depth + 1)
            return None
        return ("link", [link.origin, link.slot])


def _inlinable(ui: Mapping[str, Any], node_type: str) -> bool:
    """A KJNodes constant can be replaced by its value unless newline stripping would change it."""
    for node in ui.get("nodes") or []:
        if isinstance(node, Mapping) and node.get("type") == node_type:
            value = _first(node.get("widgets_values"))
            if isinstance(value, str) and "\n" in value:
                return False
    return True


def _first(values: Any) -> Any:
    return values[0] if isinstance(values, list) and values else None


def _sort_key(node_id: str) -> tuple[int, Any]:
    return (0, int(node_id)) if node_id.lstrip("-").isdigit() else (1, node_id)


def convert_ui(
    ui: Mapping[str, Any],
    schemas: SchemaSet,
    *,
    model_overrides: Mapping[str, str] | None = None,
    fix_stale: bool = False,
    drop_unknown: bool = False,
) -> Conversion:
    """Convert a UI-format workflow to API format (see the module notes for every rule)."""
    if not isinstance(ui, Mapping) or not isinstance(ui.get("nodes"), list):
        raise WorkflowFormatError("not a UI-format workflow (expected an object with a 'nodes' list)")
    _check_supported(ui)
    inline: frozenset[str] = frozenset()
    if drop_unknown:
        inline = frozenset(t for t in INLINE_CONSTANTS if t not in schemas and _inlinable(ui, t))
    graph = _Graph(ui, inline)
    result = Conversion({})

    for nid in sorted(graph.nodes, key=_sort_key):
        node = graph.nodes[nid]
        node_type = str(node.get("type", ""))
        mode = node.get("mode", 0)
        if (node_type in UI_ONLY_TYPES or node_type in inline) and node_type not in schemas:
            continue
        if mode == MODE_MUTED:
            result.dropped.append(nid)
            result.notes.append(f"node {nid} {node_type}: muted in the UI, left out")
            continue
        if mode == MODE_BYPASSED:
            result.dropped.append(nid)
            result.notes.append(f"node {nid} {node_type}: bypassed in the UI, its inputs are passed through")
            continue
        schema = schemas.get(node_type)
        ui_inputs = [i for i in node.get("inputs") or [] if isinstance(i, Mapping)]
        converted = frozenset(str(i["name"]) for i in ui_inputs if "widget" in i and "name" in i)
        inputs: dict[str, Any] = {}
        if schema is not None:
            mapped, unused = _map_widgets(schema, node.get("widgets_values"), converted)
            inputs.update(mapped)
            if fix_stale:
                for fix in STALE_FIXES.get(node_type, ()):
                    note = fix(nid, schema, node, inputs)
                    if note:
                        result.notes.append(f"stale value fixed: {note}")
            expected = len(widget_names(schema, converted))
            got = node.get("widgets_values")
            if unused or (isinstance(got, list) and len(mapped) < expected and not fix_stale):
                result.notes.append(
                    f"node {nid} {node_type}: {len(got) if isinstance(got, list) else '?'} widget values for "
                    f"{expected} widgets (saved with another version of the node?); check the values"
                    + ("" if fix_stale else " or use --fix-stale")
                )
        elif node.get("widgets_values"):
            result.notes.append(
                f"node {nid} {node_type}: not in the server's node schemas; its widget values cannot be named "
                "and were left out"
            )
        for ui_input in ui_inputs:
            name = str(ui_input.get("name"))
            link = graph.links.get(ui_input.get("link"))
            if link is None:
                continue
            source = graph.resolve(link, str(ui_input.get("type", "*")))
            if source is None:
                continue
            inputs[name] = source[1]
        title = node.get("title") or (schema.display_name if schema is not None else "") or node_type
        result.workflow[nid] = {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}

    if model_overrides:
        _apply_overrides(result, schemas, model_overrides)
    if drop_unknown:
        _drop_unknown(result, schemas)
    return result


def _apply_overrides(result: Conversion, schemas: SchemaSet, overrides: Mapping[str, str]) -> None:
    for nid, node in result.workflow.items():
        schema = schemas.get(node["class_type"])
        if schema is None:
            continue
        for key, value in overrides.items():
            target_node, _, name = key.rpartition(".")
            if target_node and target_node != nid:
                continue
            spec = schema.input(name)
            if spec is not None and spec.type == "COMBO" and not isinstance(node["inputs"].get(name), list):
                old = node["inputs"].get(name)
                if old == value:
                    continue
                node["inputs"][name] = value
                result.notes.append(f"node {nid} {schema.class_type}: {name} {old!r} -> {value!r} (override)")


def _drop_unknown(result: Conversion, schemas: SchemaSet) -> None:
    """Remove unknown class_types, then every node that needs a removed node through a required input."""
    removed = {nid for nid, node in result.workflow.items() if node["class_type"] not in schemas}
    changed = True
    while changed:
        changed = False
        for nid, node in result.workflow.items():
            if nid in removed:
                continue
            schema = schemas[node["class_type"]]
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] in removed:
                    spec = schema.input(name)
                    if spec is not None and not spec.required:
                        del node["inputs"][name]
                        result.notes.append(f"node {nid}: optional input {name!r} fed by a dropped node, removed")
                    else:
                        removed.add(nid)
                        changed = True
                        break
    for nid in sorted(removed, key=_sort_key):
        node = result.workflow.pop(nid)
        result.dropped.append(nid)
        reason = "unknown to the server" if node["class_type"] not in schemas else "needs a dropped node"
        result.notes.append(f"node {nid} {node['class_type']}: dropped ({reason})")


def ui_to_api(
    ui: Mapping[str, Any],
    schemas: SchemaSet,
    *,
    model_overrides: Mapping[str, str] | None = None,
    fix_stale: bool = False,
    drop_unknown: bool = False,
) -> dict[str, dict[str, Any]]:
    """The API-format workflow of :func:`convert_ui` (without its notes)."""
    return convert_ui(ui, schemas, model_overrides=model_overrides, fix_stale=fix_stale,
                      drop_unknown=drop_unknown).workflow
