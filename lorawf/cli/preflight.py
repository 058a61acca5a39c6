"""Commands that judge or convert workflows: ``validate``, ``convert``, ``object-info``.

Thin: parse options, call :mod:`lorawf.comfy.preflight` / :mod:`lorawf.workflow.convert` / :mod:`lorawf.net.schema_cache`,
print. Nothing network-related is imported unless ``--server`` is given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from lorawf.cli.loop import run_async
from lorawf.cli.options import ServerOptions, schema_options, schemas_from, server_options
from lorawf.cli.output import say
from lorawf.errors import UsageError, ValidationFailed

COMMANDS: list[click.Command] = []


def _parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set-model {pair!r}: expected INPUT=FILE or NODE_ID.INPUT=FILE")
        out[key.strip()] = value.strip()
    return out


def _conversion_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--set-model", "set_model", multiple=True, metavar="INPUT=FILE",
                        help="Replace a model file name, e.g. transformer=flux1-dev.safetensors or 136.t5=...")(func)
    func = click.option("--drop-unknown", is_flag=True,
                        help="UI files: drop nodes the server does not have (and what depends on them).")(func)
    func = click.option("--fix-stale", is_flag=True,
                        help="UI files: fix values saved by older node versions (see docs/guides/validate.md).")(func)
    return func


@click.command("validate")
@click.argument("workflow", type=click.Path(path_type=Path, dir_okay=False))
@schema_options
@_conversion_options
@click.option("--json", "as_json", is_flag=True, help="Print the problems as a JSON list.")
def validate_cmd(workflow: Path, server: ServerOptions, object_info: Path | None, refresh_schemas: bool, set_model: tuple[str, ...], drop_unknown: bool, fix_stale: bool,
                 as_json: bool) -> None:
    """Check WORKFLOW as the server would, plus what it ignores silently. Exit 0 clean, 1 problems.

    UI-format files are converted first. Schemas: --server, --object-info, or the bundled snapshot.
    """
    from lorawf.comfy.preflight import preflight, render_json, render_lines
    from lorawf.workflow.io import load_workflow

    schemas = schemas_from(server, object_info, refresh_schemas)
    api, was_ui = load_workflow(workflow, schemas, model_overrides=_parse_overrides(set_model),
                                fix_stale=fix_stale, drop_unknown=drop_unknown)
    if was_ui:
        say(f"{workflow}: UI-format workflow, converted to API format before checking", err=True)
    problems = preflight(api, schemas)
    if as_json:
        click.echo(render_json(problems), nl=False)
    else:
        for line in render_lines(problems, str(workflow)):
            say(line)
    if problems:
        raise ValidationFailed(f"{workflow}: {len(problems)} problem(s) found against {schemas.source}")
    if not as_json:
        say(f"{workflow}: ok ({len(api)} nodes checked against {schemas.source})")


@click.command("convert")
@click.argument("ui_file", metavar="UI.json", type=click.Path(path_type=Path, dir_okay=False))
@schema_options
@_conversion_options
@click.option("-o", "--output", default="-", metavar="FILE|-", help="Where to write the API workflow (default stdout).")
def convert_cmd(ui_file: Path, server: ServerOptions, object_info: Path | None, refresh_schemas: bool, set_model: tuple[str, ...], drop_unknown: bool, fix_stale: bool,
                output: str) -> None:
    """Convert a web-UI workflow export (UI.json) to API format using the node schemas."""
    from lorawf.errors import WorkflowFormatError
    from lorawf.fsutil import atomic_write_text
    from lorawf.workflow.convert import convert_ui
    from lorawf.workflow.io import detect_format, dumps_workflow, read_json

    schemas = schemas_from(server, object_info, refresh_schemas)
    data = read_json(ui_file)
    kind = detect_format(data)
    if kind != "ui":
        what = "already API format" if kind in ("api", "post_body") else "not a ComfyUI workflow"
        raise WorkflowFormatError(f"{ui_file}: {what}; `lorawf convert` takes a UI-format export")
    conversion = convert_ui(data, schemas, model_overrides=_parse_overrides(set_model), fix_stale=fix_stale,
                            drop_unknown=drop_unknown)
    for note in conversion.notes:
        say(f"{ui_file}: {note}", err=True)
    text = dumps_workflow(conversion.workflow)
    if output == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(Path(output), text)
        say(f"wrote {output} ({len(conversion.workflow)} nodes)", err=True)


@click.command("object-info")
@server_options
@click.option("-o", "--output", required=True, metavar="FILE|-", help="Where to save the snapshot.")
def object_info_cmd(server: ServerOptions, output: str) -> None:
    """Save a server's node schemas (GET /object_info) for offline `validate --object-info`."""
    from lorawf.comfy.schema import parse_object_info
    from lorawf.fsutil import atomic_write_text
    from lorawf.runs import engine

    settings = server.settings()
    data = run_async(lambda: engine.object_info(settings))
    schemas = parse_object_info(data, source=settings.redacted_url)
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    if output == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(Path(output), text)
        say(f"wrote {output}: {len(schemas)} node types from {settings.redacted_url}", err=True)


COMMANDS.extend([validate_cmd, convert_cmd, object_info_cmd])
