"""Commands that need no server: ``plan``, ``patch``, ``regen``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lorawf.cli.options import (
    ServerOptions,
    overrides_from,
    plan_options,
    schema_options,
    schemas_from,
    trainer_option,
)
from lorawf.cli.output import say
from lorawf.errors import DriftFound, UsageError

if TYPE_CHECKING:  # the planner is imported when a command runs, not for `lorawf --help`
    from lorawf.training.plan import TrainingPlan
    from lorawf.workflow.build import BuiltWorkflow

COMMANDS: list[click.Command] = []

#: readable=False: an unreadable folder is the scan's one-line DatasetError (exit 3), not click's usage error.
DATASET_PATH = click.Path(readable=False, path_type=Path)

F = Callable[..., Any]


def resolve_images(dataset: Path | None, images: int | None) -> tuple[int, str | None]:
    """Image count and a one-line dataset summary: ``--images`` stands in, else the folder is scanned."""
    if images is not None:
        return images, None
    if dataset is None:
        raise UsageError("give a DATASET folder or --images N")
    from lorawf.training.dataset import scan_dataset

    scan = scan_dataset(dataset)
    return scan.image_count, scan.summary()


@click.command("plan")
@click.argument("dataset", required=False, type=DATASET_PATH)
@plan_options
@trainer_option
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON object.")
def plan_command(dataset: Path | None, images: int | None, model: str | None, trainer: str, as_json: bool,
                 **kwargs: Any) -> None:
    """Plan hyperparameters for a DATASET folder (or --images N)."""
    from lorawf.training.plan import format_plan, plan_training

    count, summary = resolve_images(dataset, images)
    plan = plan_training(count, overrides_from(kwargs), model=model or "flux", trainer=trainer)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
        return
    if summary:
        say(summary)
    say(format_plan(plan))


COMMANDS.append(plan_command)


def _echo_plan_summary(plan: TrainingPlan) -> None:
    say(
        f"plan: {plan.images} images -> {plan.max_train_steps} steps ({plan.steps_per_image:.1f}/image), "
        f"checkpoints at {', '.join(map(str, plan.checkpoint_steps))}",
        err=True,
    )
    for advice in plan.advice:
        if advice.severity != "info":
            say(f"{'WARNING' if advice.severity == 'strong' else 'warning'}: {advice.message}", err=True)


def check_outputs(output: str, emit_patch: Path | None) -> None:
    """Refuse a bad ``-o`` or ``--emit-patch`` before anything is written, so neither file is left alone."""
    from lorawf.fsutil import check_write_target

    if output == "":
        raise UsageError("-o '': the output file name is empty; give a file name, or - for stdout")
    if emit_patch is not None and str(emit_patch) in ("", "."):
        raise UsageError("--emit-patch needs a file name (got an empty name or '.'): give the file for the "
                         "JSON Patch")
    if output != "-":
        check_write_target(Path(output))
    if emit_patch is not None:
        check_write_target(emit_patch)


def _echo_patch_notes(built: BuiltWorkflow) -> None:
    for note in built.patch.notes:
        say(f"note: {note}", err=True)
    if built.patch.unchecked:
        say(f"not checked (no node schema; pass --object-info FILE or --server URL): "
            f"{', '.join(built.patch.unchecked)}", err=True)


@click.command("patch")
@click.argument("dataset", required=False, type=DATASET_PATH)
@click.option("--token", required=True, help="Trigger token that replaces STYLE_TOKEN (class_tokens, prompts).")
@plan_options
@click.option("--template", type=click.Path(path_type=Path), help="API-format template (default: bundled).")
@click.option("--server-dataset-path", help="Dataset folder on the GPU host (default: DATASET's absolute path).")
@click.option("--checkpoint-dir", help="Folder on the GPU host for the LoRA checkpoints (InitFluxLoRATraining.output_dir).")
@click.option("--output-name", help="LoRA file-name stem (default: from the template, with the token).")
@click.option("--set", "sets", multiple=True, metavar="NODE.input=VALUE",
              help="Set any other input by node id or class_type, typed from the node schema. Repeatable.")
@click.option("--emit-patch", type=click.Path(path_type=Path), help="Write the RFC 6902 JSON Patch applied.")
@click.option("-o", "--output", default="-", show_default=True, help="Output file, or - for stdout.")
@schema_options
def patch_command(
    dataset: Path | None, token: str, images: int | None, model: str | None, template: Path | None,
    server_dataset_path: str | None, checkpoint_dir: str | None, output_name: str | None,
    sets: tuple[str, ...], emit_patch: Path | None, output: str, server: ServerOptions,
    object_info: Path | None, refresh_schemas: bool, **kwargs: Any,
) -> None:
    """Write a patched training workflow for DATASET (or --images N).

    Nodes of other packs pass through; --object-info FILE or --server URL checks them too."""
    from lorawf.fsutil import atomic_write_text
    from lorawf.workflow.build import build_workflow
    from lorawf.workflow.patch import PatchOptions

    check_outputs(output, emit_patch)
    count, summary = resolve_images(dataset, images)
    if server_dataset_path is None and dataset is not None:
        server_dataset_path = str(dataset.resolve()) if images is None else str(dataset)
    options = PatchOptions(token, server_dataset_path, checkpoint_dir, output_name, sets)
    schemas = schemas_from(server, object_info, refresh_schemas, over_bundled=True)
    built = build_workflow(count, options, overrides_from(kwargs), template, schemas, model=model)
    if summary:
        say(summary, err=True)
    _echo_plan_summary(built.plan)
    _echo_patch_notes(built)
    if emit_patch is not None:
        atomic_write_text(emit_patch, json.dumps(built.patch.operations, indent=2, ensure_ascii=False) + "\n")
    if output == "-":
        click.echo(built.text, nl=False)
    else:
        atomic_write_text(Path(output), built.text)
        say(f"wrote {output}", err=True)


COMMANDS.append(patch_command)


@click.command("regen")
@click.option("--presets", type=click.Path(path_type=Path), default=Path("workflows/presets.toml"),
              show_default=True, help="TOML file listing the workflow variants to generate.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming every file that is out of date.")
@click.option("--object-info", "object_info", type=click.Path(path_type=Path, dir_okay=False),
              help="Node schemas of other packs the templates use (added to the bundled snapshot).")
def regen_command(presets: Path, check: bool, object_info: Path | None) -> None:
    """Regenerate committed workflow files from a presets file (CI: --check fails on drift)."""
    from lorawf.fsutil import atomic_write_text
    from lorawf.training.plan import overrides_from_names
    from lorawf.workflow.build import build_workflow
    from lorawf.workflow.patch import PatchOptions
    from lorawf.workflow.regen import load_presets, short_diff

    schemas = schemas_from(ServerOptions(), object_info, False, over_bundled=True)
    drifted: list[str] = []
    for preset in load_presets(presets):
        v = dict(preset.values)
        overrides = overrides_from_names(v)
        options = PatchOptions(
            str(v["token"]), v.get("server_dataset_path"), v.get("checkpoint_dir"), v.get("output_name"),
            tuple(v.get("set", ())),
        )
        try:
            built = build_workflow(int(v["images"]), options, overrides, preset.template, schemas,
                                   model=v.get("model"))
        except Exception as exc:  # re-raise with the preset's name so CI logs say which one broke
            from lorawf.errors import LorawfError

            if isinstance(exc, LorawfError):
                exc.message = f"{presets}: preset {preset.name}: {exc.message}"
            raise
        new = built.text
        try:
            old: str | None = preset.output.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = None
        if old == new:
            if not check:
                say(f"unchanged {preset.output}")
            continue
        if check:
            drifted.append(str(preset.output))
            say(f"out of date: {preset.output} (preset {preset.name})" if old is not None
                       else f"missing: {preset.output} (preset {preset.name})")
            if old is not None:
                say(short_diff(old, new, preset.output))
            continue
        preset.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(preset.output, new)
        say(f"wrote {preset.output}")
    if check and not drifted:
        say(f"all workflow files from {presets} are up to date")
    if drifted:
        raise DriftFound(f"{len(drifted)} workflow file(s) out of date; run `lorawf regen --presets {presets}`")


COMMANDS.append(regen_command)
