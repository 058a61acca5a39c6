"""ComfyUI's node errors: parse the ``node_errors`` of a ``POST /prompt`` answer, render them, hint.

Pure. A 400 answer becomes a :class:`~lorawf.errors.PromptRejected` through :func:`rejection`; the lines
follow docs/protocol.md §3 ("What a client should print").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorawf.comfy.events import node_title
from lorawf.errors import PromptRejected


@dataclass(frozen=True)
class NodeError:
    """One entry of ``node_errors[<id>].errors[]`` of a 400 (or 200) answer to ``POST /prompt``."""

    node: str
    class_type: str | None
    title: str | None
    type: str
    message: str
    details: str
    input_name: str | None = None
    received: Any = None
    limit: str | None = None
    dependent_outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "class_type": self.class_type, "title": self.title, "type": self.type,
                "message": self.message, "details": self.details, "input_name": self.input_name,
                "received": self.received, "limit": self.limit,
                "dependent_outputs": list(self.dependent_outputs)}

    def hint(self) -> str | None:
        if self.type == "value_not_in_list":
            if self.input_name and (self.input_name.endswith("_name") or self.input_name in
                                    ("transformer", "vae", "clip_l", "t5", "ckpt_name", "lora_name")):
                return "file not found on server; see GET /models/<folder> or /object_info"
            return f"allowed: {self.limit}" if self.limit else None
        if self.type == "required_input_missing":
            return f"add the input {self.input_name!r}" if self.input_name else None
        if self.type == "return_type_mismatch":
            return "the linked output has a different type"
        return None


def _limit_from_config(etype: str, config: Any) -> str | None:
    if not isinstance(config, list) or not config:
        return None
    if etype == "value_not_in_list":
        options = config[0] if isinstance(config[0], list) else None
        if options is None and len(config) > 1 and isinstance(config[1], Mapping):
            options = config[1].get("options")
        if isinstance(options, list):
            shown = ", ".join(repr(o) for o in options[:10])
            return f"[{shown}{', ...' if len(options) > 10 else ''}]"
        return None
    opts = config[1] if len(config) > 1 and isinstance(config[1], Mapping) else {}
    if etype == "value_smaller_than_min" and "min" in opts:
        return f"min {opts['min']}"
    if etype == "value_bigger_than_max" and "max" in opts:
        return f"max {opts['max']}"
    return None


def parse_node_errors(node_errors: Any, workflow: Mapping[str, Any] | None) -> list[NodeError]:
    """Flatten ``node_errors`` into :class:`NodeError` entries (tolerates the old list form)."""
    out: list[NodeError] = []
    if not isinstance(node_errors, Mapping):
        return out
    for node, entry in node_errors.items():
        if not isinstance(entry, Mapping):
            continue
        class_type = entry.get("class_type")
        deps = tuple(str(d) for d in entry.get("dependent_outputs") or [])
        title = node_title(workflow, str(node)) if workflow and str(node) in workflow else None
        for err in entry.get("errors") or []:
            if not isinstance(err, Mapping):
                continue
            extra_info = err.get("extra_info")
            extra: Mapping[str, Any] = extra_info if isinstance(extra_info, Mapping) else {}
            etype = str(err.get("type") or "")
            out.append(NodeError(
                str(node), None if class_type is None else str(class_type), title, etype,
                str(err.get("message") or ""), str(err.get("details") or ""),
                extra.get("input_name"), extra.get("received_value"),
                _limit_from_config(etype, extra.get("input_config")), deps,
            ))
    return out


def render_node_errors(errors: Sequence[NodeError]) -> list[str]:
    """The indented lines of docs/protocol.md §3 ("What a client should print")."""
    lines: list[str] = []
    last_node: str | None = None
    for err in errors:
        if err.node != last_node:
            head = f"  node {err.node} {err.class_type or ''}".rstrip()
            if err.title and err.title != err.class_type:
                head += f' "{err.title}"'
            if err.dependent_outputs:
                head += f" (blocks output {', '.join(err.dependent_outputs)})"
            lines.append(head + ":")
            last_node = err.node
        text = err.message + (f": {err.details}" if err.details else "")
        if err.received is not None and err.type != "value_not_in_list":
            text += f"   (received {err.received!r})"
        lines.append(f"    - {text}")
        hint = err.hint()
        if hint:
            lines.append(f"      hint: {hint}")
    return lines


_TYPE_HINTS = {
    "invalid_prompt": "custom node not installed?",
    "missing_node_type": "custom node not installed?",
    "prompt_no_outputs": "add an output node such as SaveImage or PreviewAny",
    "no_prompt": "the request had no prompt",
}


def rejection(status: int, error: Any, node_errors: list[NodeError]) -> PromptRejected:
    """The error for a rejected ``POST /prompt``: a summary line, then every node error with its hint."""
    if isinstance(error, Mapping):
        error_type = str(error.get("type") or "")
        message = str(error.get("message") or "")
        details = str(error.get("details") or "")
    else:
        error_type, message, details = "", str(error or ""), ""
    kind = f", {error_type}" if error_type else ""
    summary = f"prompt rejected (HTTP {status}{kind}): {message or 'no reason given'}"
    detail_lines: list[str] = []
    if node_errors:
        detail_lines += render_node_errors(node_errors)
    elif details and details != message:
        detail_lines.append(f"  {details}")
    hint = _TYPE_HINTS.get(error_type)
    if hint:
        detail_lines.append(f"  hint: {hint}")
    return PromptRejected(summary, tuple(detail_lines), status=status, error=error, error_type=error_type,
                          error_message=message, error_details=details, node_errors=tuple(node_errors))
