"""Commands that read local run records: ``runs``, ``sheet``."""

from __future__ import annotations

from pathlib import Path

import click

from lorawf.cli.output import say
from lorawf.errors import InputError
from lorawf.printable import json_line

COMMANDS: list[click.Command] = []


def human_size(size: int) -> str:
    """``1.2 GB``-style size (powers of 1000, like file managers)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - loop always returns


@click.command("runs")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON object.")
def runs_command(directory: Path, as_json: bool) -> None:
    """List the runs recorded under DIRECTORY (DIRECTORY/run.json and DIRECTORY/*/run.json), oldest first.

    An unreadable run.json is reported as a one-line warning and skipped.
    """
    from lorawf.runs.record import list_runs
    from lorawf.timefmt import local_datetime

    summaries = list_runs(directory)
    good = [s for s in summaries if s.error is None]
    for bad in summaries:
        if bad.error is not None:
            say(f"warning: {bad.error}", err=True)
    if as_json:
        payload = {
            "runs": [s.to_dict() for s in good],
            "unreadable": [{"path": str(s.path), "error": s.error} for s in summaries if s.error is not None],
        }
        click.echo(json_line(payload, indent=2))
        return
    if not good:
        say(f"no runs found in {directory} (looked for run.json and */run.json)", err=True)
        return
    rows = [("NAME", "STARTED (UTC)", "OUTCOME", "STEPS", "CHECKPOINTS", "SIZE")]
    for s in good:
        planned = f"/{s.checkpoints_planned}" if s.checkpoints_planned is not None else ""
        rows.append((
            s.name,
            local_datetime(s.started) if s.started else "-",
            s.outcome or "-",
            str(s.steps) if s.steps is not None else "-",
            f"{s.checkpoints}{planned}" + (" +final" if s.final_lora else ""),
            human_size(s.size),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        say("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


COMMANDS.append(runs_command)


@click.command("sheet")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="PNG to write (default RUN_DIR/contact_sheet.png).")
def sheet_command(run_dir: Path, output: Path | None) -> None:
    """Build the contact sheet of RUN_DIR's validation images: one row per prompt, one column per step.

    Prompts and the title come from RUN_DIR/run.json when it exists. Needs Pillow (pip install 'lorawf[sheet]').
    """
    from lorawf.fsutil import check_write_target
    from lorawf.runs.sheet import collect_validation_images, make_run_sheet

    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder (give a run folder written by `lorawf run --download`)")
    if output is not None:
        check_write_target(output)  # a missing folder is one line; it is never created
    out = make_run_sheet(run_dir, out=output)
    if out is None:
        raise InputError(
            f"{run_dir}: no validation images found (expected val_step<NNNNN>_<NNNNN>_.png in any subfolder)",
            hint="were they downloaded? check the run's outcome with `lorawf runs`",
        )
    count = len(collect_validation_images(run_dir))
    say(f"contact sheet of {count} validation image(s)", err=True)
    say(str(out))


COMMANDS.append(sheet_command)
