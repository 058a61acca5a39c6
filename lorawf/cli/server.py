"""Commands that talk to a ComfyUI server: ``submit``, ``watch``, ``queue``, ``cancel``, ``run``, ``resume``.

Thin: parse options, call the engine (:mod:`lorawf.runs.engine`, :mod:`lorawf.runs.pipeline`) on one event
loop with a :class:`~lorawf.cli.display.Console` as the reporter, render. The engine, the client and the
displays are imported inside the commands, so ``lorawf --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lorawf.cli.loop import run_async
from lorawf.cli.options import (
    PROMPT_ID,
    ServerOptions,
    follow_from,
    follow_options,
    plan_options,
    run_trainer_option,
    server_options,
    timeout_option,
)
from lorawf.cli.output import say
from lorawf.errors import UsageError
from lorawf.net.limits import DEFAULT_UPLOAD_JOBS, MAX_UPLOAD_JOBS
from lorawf.printable import json_line, printable

COMMANDS: list[click.Command] = []


@click.command("submit")
@click.argument("workflow", type=click.Path(dir_okay=True, path_type=Path))
@server_options
@click.option("--no-wait", is_flag=True, help="Queue the prompt, print its id and exit.")
@click.option("--no-preflight", is_flag=True,
              help="Do not check the workflow against the server's node schemas before posting.")
@follow_options
def submit_cmd(workflow: Path, server: ServerOptions, no_wait: bool, no_preflight: bool, json_mode: bool,
               download: Path | None, timeout: float | None, previews: Path | None, verbose: bool) -> None:
    """Submit an API-format WORKFLOW and follow it to the end.

    \b
    Shows the current node, a step bar with rate and ETA and an overall bar over all training loops
    (plain log lines without a terminal, NDJSON with --json). Ctrl-C cancels the prompt: a pending
    one is removed from the queue, a running one is interrupted by its id. Exit codes: 0 success,
    1 run failed or interrupted, 4 rejected, 5 unreachable/protocol error/prompt lost, 130 cancelled.
    """
    from lorawf.cli.display import make_console
    from lorawf.runs import engine

    settings = server.settings()
    stream = sys.stderr if no_wait and not json_mode else None  # stdout gets only the prompt id, for scripts
    console = make_console(json_mode, settings.secrets, verbose, stream)
    options = follow_from(wait=not no_wait, download=download, timeout=timeout, previews=previews)
    try:
        result = run_async(lambda: engine.submit(settings, workflow, console, options, preflight=not no_preflight))
    finally:
        console.close()
    if no_wait and not json_mode:
        say(result.prompt_id)


@click.command("watch")
@click.argument("prompt_id", type=PROMPT_ID)
@server_options
@follow_options
def watch_cmd(prompt_id: str, server: ServerOptions, json_mode: bool, download: Path | None,
              timeout: float | None, previews: Path | None, verbose: bool) -> None:
    """Follow PROMPT_ID to its end (or report it from history if it already finished).

    Ctrl-C only stops watching; use `lorawf cancel` to cancel the prompt.
    """
    from lorawf.cli.display import make_console
    from lorawf.runs import engine

    settings = server.settings()
    console = make_console(json_mode, settings.secrets, verbose)
    options = follow_from(download=download, timeout=timeout, previews=previews)
    try:
        run_async(lambda: engine.watch(settings, prompt_id.strip(), console, options))
    finally:
        console.close()


@click.command("queue")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON object (schema lorawf.queue/1).")
def queue_cmd(server: ServerOptions, json_mode: bool) -> None:
    """Show running and pending prompts, pending ones in the order they will run."""
    from lorawf.comfy.events import running_items, sorted_pending
    from lorawf.runs import engine

    settings = server.settings()
    queue = run_async(lambda: engine.queue(settings))

    def row(item: list[Any]) -> dict[str, Any]:
        outputs = item[4] if len(item) > 4 and isinstance(item[4], list) else []
        return {"prompt_id": str(item[1]), "number": item[0], "outputs": [str(o) for o in outputs]}

    running = [row(it) for it in running_items(queue)]
    pending = [{"position": pos, **row(it)} for pos, it in enumerate(sorted_pending(queue), start=1)]
    if json_mode:
        click.echo(json_line({"schema": "lorawf.queue/1", "server": settings.redacted_url,
                  "running": running, "pending": pending}))
        return
    say(f"server {settings.redacted_url}: {len(running)} running, {len(pending)} pending")
    for item in running:
        say(f"  running  {printable(item['prompt_id'])}  number {item['number']}")
    for item in pending:
        say(f"  {item['position']:>7}  {printable(item['prompt_id'])}  number {item['number']}")


@click.command("cancel")
@click.argument("prompt_id", type=PROMPT_ID)
@server_options
@click.option("--json", "json_mode", is_flag=True, help="Print the result as one lorawf.event/1 line.")
def cancel_cmd(prompt_id: str, server: ServerOptions, json_mode: bool) -> None:
    """Cancel PROMPT_ID: remove it from the queue if pending, interrupt it (by id only) if running."""
    from lorawf.runs import engine

    settings = server.settings()
    done = run_async(lambda: engine.cancel(settings, prompt_id))
    if json_mode:
        click.echo(json_line({**done.to_dict(), "prompt_id": prompt_id}))
    else:
        say(done.message)


@click.command("run")
# readable=False: an unreadable folder is the scan's one-line DatasetError (exit 3), not click's usage error
@click.argument("dataset", required=False, type=click.Path(readable=False, path_type=Path))
@click.option("--token", required=True, help="Trigger token that replaces STYLE_TOKEN (class_tokens, prompts).")
@plan_options
@run_trainer_option
@click.option("--upload", is_flag=True, help="Upload the dataset's images and captions to the server first.")
@click.option("--upload-jobs", type=click.IntRange(1, MAX_UPLOAD_JOBS), default=DEFAULT_UPLOAD_JOBS,
              show_default=True, metavar="N",
              help="Files uploaded at once (more helps on a link with a long round trip).")
@click.option("--server-dataset-path", help="Dataset folder that already exists on the GPU host (no upload).")
@click.option("--server-input-dir", help="ComfyUI's input folder on the GPU host (default: learned from the server).")
@click.option("--server-output-dir", help="ComfyUI's output folder on the GPU host (default: learned from the server).")
@click.option("--template", type=click.Path(path_type=Path), help="Workflow template (default: bundled).")
@click.option("--set", "sets", multiple=True, metavar="NODE.input=VALUE", help="Set any other input. Repeatable.")
@click.option("--download", "download_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("lorawf-runs"), show_default=True,
              help="Local folder; each run gets its own subfolder with run.json, checkpoints, validation images.")
@click.option("--download-as-you-go", is_flag=True, help="Fetch each checkpoint as soon as it is written.")
@click.option("--auto-continue", "auto_continue", type=click.IntRange(0, 100), is_flag=False, flag_value=3,
              default=0, metavar="[N]",
              help="When the server loses the prompt (restart, out of memory), wait for it to come back and "
                   "continue from the newest checkpoint, at most N times (3 when N is left out).")
@click.option("--resumable", is_flag=True,
              help="Save the training state with every checkpoint, so `lorawf continue` resumes exactly "
                   "(about 3x the LoRA's size per checkpoint on the server; said before anything is sent).")
@click.option("--name", help="Run name (default: TOKEN-<N>img-<UTC date-time>, unique).")
@click.option("--no-preflight", is_flag=True, help="Do not check the workflow against the server's schemas.")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (schema lorawf.event/1).")
@timeout_option
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def run_cmd(dataset: Path | None, token: str, images: int | None, model: str | None, trainer: str, upload: bool,
            upload_jobs: int,
            server_dataset_path: str | None,
            server_input_dir: str | None, server_output_dir: str | None, template: Path | None,
            sets: tuple[str, ...], download_root: Path, download_as_you_go: bool, auto_continue: int, resumable: bool,
            name: str | None,
            no_preflight: bool, server: ServerOptions, json_mode: bool, timeout: float | None, verbose: bool,
            **kwargs: Any) -> None:
    """Plan, patch, submit and follow a training run for DATASET; download its LoRA files.

    \b
    lorawf run ./my_style --token mystyle --server http://gpu:8188 --upload
    leaves lorawf-runs/<run>/ with checkpoints/, validation/, contact_sheet.png and run.json.
    """
    from lorawf.cli.display import make_console
    from lorawf.cli.options import overrides_from
    from lorawf.runs import pipeline

    check_dataset_source(upload, server_dataset_path)
    settings = server.settings()
    request = pipeline.RunRequest(
        token=token, dataset=dataset, images=images, overrides=overrides_from(kwargs), template=template,
        sets=sets, upload=upload, server_dataset_path=server_dataset_path, server_input_dir=server_input_dir,
        server_output_dir=server_output_dir, download_root=download_root, download_as_you_go=download_as_you_go,
        preflight=not no_preflight, name=name, resumable=resumable, upload_jobs=upload_jobs, model=model,
        trainer=trainer,
    )
    if trainer == "native" and auto_continue:
        raise UsageError("--auto-continue with --trainer native: continuing a native run is not built yet; "
                         "drop --auto-continue")
    console = make_console(json_mode, settings.secrets, verbose)
    try:
        follow = follow_from(timeout=timeout)
        if auto_continue:
            from lorawf.runs.continuing import auto_continue as auto

            run_dir = run_async(lambda: auto(settings, console, follow, auto_continue,
                                             lambda reporter: pipeline.run(settings, request, reporter, follow)))
        else:
            from lorawf.runs import backend

            run_dir = run_async(lambda: backend.run(settings, request, console, follow))
    finally:
        console.close()
    console.line(f"run folder: {run_dir}")


def check_dataset_source(upload: bool, server_dataset_path: str | None) -> None:
    """``--upload`` chooses the server folder itself: a ``--server-dataset-path`` beside it would be ignored."""
    if upload and server_dataset_path is not None:
        raise UsageError(
            f"--upload and --server-dataset-path '{printable(server_dataset_path)}' both say where the images "
            "are: give --upload to send the local DATASET, or --server-dataset-path for a folder already on the "
            "GPU host, not both"
        )


@click.command("resume")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--server-input-dir", help="ComfyUI's input folder on the GPU host (default: learned from the server).")
@click.option("--server-output-dir", help="ComfyUI's output folder on the GPU host (default: learned from the server).")
@click.option("--download-as-you-go", is_flag=True, help="Fetch each checkpoint as soon as it is written.")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (schema lorawf.event/1).")
@timeout_option
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def resume_cmd(run_dir: Path, server_input_dir: str | None, server_output_dir: str | None,
               download_as_you_go: bool, server: ServerOptions, json_mode: bool, timeout: float | None,
               verbose: bool) -> None:
    """Re-attach to the run recorded in RUN_DIR (after a closed laptop or a lost connection).

    Follows the prompt to its end, or reads the end from history, downloads every checkpoint and
    validation image still missing, redraws the contact sheet and updates run.json. The server is the
    one recorded in run.json unless --server is given. Ctrl-C only stops following.
    """
    from lorawf.cli.display import make_console
    from lorawf.runs import pipeline
    from lorawf.runs.record import read_record

    settings = server.settings(fallback_url=read_record(run_dir).server_url)
    console = make_console(json_mode, settings.secrets, verbose)
    try:
        run_async(lambda: pipeline.resume(settings, run_dir, console, follow_from(timeout=timeout),
                                          server_input_dir=server_input_dir, server_output_dir=server_output_dir,
                                          as_you_go=download_as_you_go))
    finally:
        console.close()
    console.line(f"run folder: {run_dir}")


COMMANDS.extend([submit_cmd, watch_cmd, queue_cmd, cancel_cmd, run_cmd, resume_cmd])
