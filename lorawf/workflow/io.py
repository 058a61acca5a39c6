"""Reading and writing workflow files: JSON errors, format detection (API vs UI), deterministic output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.errors import WorkflowFormatError

if TYPE_CHECKING:
    from lorawf.comfy.schema import SchemaSet

Workflow = dict[str, Any]


def read_json(path: Path) -> Any:
    """Read a JSON file; any problem is a one-line :class:`WorkflowFormatError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise WorkflowFormatError(f"{path}: is a directory, expected a workflow .json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowFormatError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None


def detect_format(data: Any) -> str:
    """Return ``"api"`` for an API-format graph, ``"ui"`` for a web-UI export, ``"unknown"`` otherwise."""
    if isinstance(data, dict):
        if isinstance(data.get("nodes"), list) and "links" in data:
            return "ui"
        if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            return "api"
        if isinstance(data.get("prompt"), dict):
            return "post_body"
    return "unknown"


def as_api_workflow(data: Any, source: str) -> Workflow:
    """Return ``data`` as an API-format graph, or raise a clear error saying what the file is instead."""
    kind = detect_format(data)
    if kind == "api":
        return dict(data)
    if kind == "ui":
        raise WorkflowFormatError(
            f"{source}: this is a UI-format workflow (exported from the ComfyUI web UI), not API format",
            hint="convert it with `lorawf convert` or export with 'Save (API)'",
        )
    if kind == "post_body":
        return dict(data["prompt"])
    raise WorkflowFormatError(
        f"{source}: not an API-format ComfyUI workflow (expected an object of nodes with 'class_type' and 'inputs')"
    )


def dumps_workflow(workflow: Any) -> str:
    """Deterministic serialization: key order kept, 2-space indent, UTF-8 kept, trailing newline."""
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def load_workflow(
    path: Path,
    schemas: SchemaSet,
    *,
    model_overrides: Mapping[str, str] | None = None,
    fix_stale: bool = False,
    drop_unknown: bool = False,
) -> tuple[Workflow, bool]:
    """Read a workflow file in API or UI format; UI files are converted with ``schemas``.

    Returns ``(api_workflow, was_ui)``. The options are those of :func:`lorawf.workflow.convert.convert_ui`.
    """
    data = read_json(path)
    if detect_format(data) == "ui":
        from lorawf.workflow.convert import convert_ui

        conversion = convert_ui(
            data, schemas, model_overrides=model_overrides, fix_stale=fix_stale, drop_unknown=drop_unknown
        )
        return conversion.workflow, True
    return as_api_workflow(data, str(path)), False
