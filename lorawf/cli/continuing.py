"""``lorawf continue``: train the rest of a run the server lost, from its newest checkpoint."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lorawf.cli.loop import run_async
from lorawf.cli.options import ServerOptions, follow_from, server_options, timeout_option

if TYPE_CHECKING:
    from lorawf.runs.engine import Reporter

COMMANDS: list[click.Command] = []


@click.command("continue")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--mode", type=click.Choice(["exact", "weights"]), default=None,
              help="exact: from the saved training state (runs started with --resumable); weights: from the "
                   "checkpoint's weights, with a fresh optimizer and schedule (approximate). Default: exact "
                   "when the state is on the server, else weights.")
@click.option("--auto-continue", "auto_continue", type=click.IntRange(0, 100), is_flag=False, flag_value=3,
              default=0, metavar="[N]",
              help="If the server loses this continuation too, wait for it and continue again, at most N times.")
@click.option("--server-input-dir", help="ComfyUI's input folder on the GPU host (default: learned from the server).")
@click.option("--server-output-dir", help="ComfyUI's output folder on the GPU host (default: learned from the server).")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (schema lorawf.event/1).")
@timeout_option
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def continue_cmd(run_dir: Path, mode: str | None, auto_continue: int, server_input_dir: str | None, server_output_dir: str | None,
                 server: ServerOptions, json_mode: bool, timeout: float | None, verbose: bool) -> None:
    """Continue the run in RUN_DIR that the server lost (restart, out of memory, preempted host).

    \b
    Trains exactly the remaining steps from the newest checkpoint still on the server, with the remaining
    checkpoints at the planned steps, and stores them beside the first ones under the run's step numbers.
    Refuses when the run succeeded, when its prompt is still alive (use `lorawf resume`), or when no
    checkpoint is left on the server.
    """
    from lorawf.cli.display import make_console
    from lorawf.runs.continuing import auto_continue as auto
    from lorawf.runs.continuing import continue_run
    from lorawf.runs.record import read_record

    settings = server.settings(fallback_url=read_record(run_dir).server_url)
    console = make_console(json_mode, settings.secrets, verbose)
    try:
        follow = follow_from(timeout=timeout)

        def once(reporter: Reporter) -> Awaitable[Path]:
            return continue_run(settings, run_dir, reporter, follow, mode=mode,
                                server_input_dir=server_input_dir, server_output_dir=server_output_dir)

        run_async(lambda: auto(settings, console, follow, auto_continue, once, run_dir))
    finally:
        console.close()
    console.line(f"run folder: {run_dir}")


COMMANDS.append(continue_cmd)
