"""Commands that talk to a ComfyUI server: ``submit``, ``watch``, ``queue``, ``cancel``.

Thin: parse options, build :class:`~lorawf.net.settings.ServerSettings`, call :mod:`lorawf.net.client`
(imported inside the commands, so ``lorawf --help`` stays fast), render events with :mod:`lorawf.cli.display`.
:func:`run_submission` is the one entry point other commands (``lorawf run``) use to submit and wait.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lorawf.cli.offline import plan_options  # click decorators only: nothing heavy
from lorawf.errors import (
    Cancelled,
    LorawfError,
    PromptLost,
    RunFailed,
    ServerError,
    ServerRejected,
    ServerUnreachable,
    exit_code_for,
)
from lorawf.net.settings import ServerSettings

# asyncio, the client, the events and the display are imported inside the functions that use them:
# this module is loaded by every `lorawf` start, and they would double the start-up time of `lorawf plan`.
if TYPE_CHECKING:
    from lorawf.comfy.events import Event, OutputFile
    from lorawf.net.prompts import RunResult

COMMANDS: list[click.Command] = []
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ plumbing


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; the first Ctrl-C cancels it (the client then cancels our prompt and raises)."""
    import asyncio
    import contextlib
    import signal

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        installed = False
        if task is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGINT, task.cancel)
                installed = True
        try:
            return await factory()
        finally:
            if installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signal.SIGINT)

    return asyncio.run(main())


def outcome_of(error: BaseException) -> str:
    """The ``done`` event's outcome for an error."""
    from lorawf.errors import WaitTimeout

    if isinstance(error, Cancelled):
        return "cancelled"
    if isinstance(error, ServerRejected):
        return "rejected"
    if isinstance(error, PromptLost):
        return "lost"
    if isinstance(error, WaitTimeout):
        return "timeout"
    if isinstance(error, ServerUnreachable):
        return "unreachable"
    if isinstance(error, ServerError):
        return "protocol_error"
    return "failed"


class _Recorder:
    """Wraps a display: remembers the prompt id, and tells an observer (``lorawf run``) every event."""

    def __init__(self, display: Callable[[Event], None], observer: Callable[[Event], None] | None = None) -> None:
        self.display = display
        self.observer = observer
        self.prompt_id: str | None = None

    def __call__(self, event: Event) -> None:
        if event.prompt_id and self.prompt_id is None or event.kind == "queued":
            self.prompt_id = event.prompt_id
        if self.observer is not None:
            self.observer(event)
        self.display(event)


@dataclass
class SubmitOptions:
    """Everything ``submit``/``run`` accept beyond the server settings and the workflow."""

    wait: bool = True
    json_mode: bool = False
    download: Path | None = None
    timeout: float | None = None
    previews: Path | None = None
    verbose: bool = False
    extra_data: Mapping[str, Any] | None = None
    #: sees every event before the display (``lorawf run`` collects outputs with it)
    observer: Callable[[Event], None] | None = None
    #: runs after the wait ends, success or not, before the final ``done`` event; returns download problems
    after_run: Callable[[RunResult | None, LorawfError | None, Callable[[Event], None]], list[str]] | None = None


def _finish(recorder: _Recorder, display: Any, settings: ServerSettings, result: RunResult | None,
            error: LorawfError | None, files: list[OutputFile]) -> None:
    from lorawf.cli.display import scrub
    from lorawf.comfy.events import Done, ErrorEvent

    if error is not None:
        message = scrub(str(error).splitlines()[0], settings.secret_values())
        rejected_nodes: tuple[Any, ...] = tuple(getattr(error, "node_errors", ()) or ())
        if isinstance(error, ServerRejected):
            recorder(ErrorEvent(recorder.prompt_id, "rejected", message, node_errors=rejected_nodes))
        outcome = result.outcome if isinstance(error, RunFailed) and result else outcome_of(error)
        recorder(Done(recorder.prompt_id, outcome, exit_code_for(error), message, tuple(files)))
    elif result is not None:
        recorder(Done(result.prompt_id, result.outcome, 0, result.message, tuple(files)))
    display.close()


def _conclude(result: RunResult, settings: ServerSettings, download: Path | None, sink: Callable[[Event], None],
              problems: list[str] | None = None) -> None:
    """Download outputs if asked, then turn a failed/interrupted run into :class:`RunFailed`."""
    from lorawf.errors import ProtocolError
    from lorawf.net.download import download_outputs

    problems = list(problems or [])
    if download is not None and result.files:
        problems += run_async(lambda: download_outputs(settings, result.files, download, sink, result.prompt_id))
    if result.outcome in ("failed", "interrupted"):
        raise RunFailed(result.message)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProtocolError(f"{len(problems)} output file(s) not downloaded: {problems[0]}{more}")


def _follow(settings: ServerSettings, options: SubmitOptions, display: Any, recorder: _Recorder,
            wait: Callable[[], Awaitable[RunResult]]) -> RunResult:
    """Run ``wait`` (submit-and-wait or watch), then ``after_run``, downloads, and the final ``done`` event.

    Raises a :class:`~lorawf.errors.LorawfError` for every non-success, after the ``done`` event.
    """
    result: RunResult | None = None
    error: LorawfError | None = None
    try:
        result = run_async(wait)
    except LorawfError as err:
        error = err
    problems: list[str] = []
    if options.after_run is not None:
        try:
            problems = options.after_run(result, error, recorder)
        except LorawfError as err:
            error = error or err
    if error is None and result is not None:
        try:
            _conclude(result, settings, options.download, recorder, problems)
        except LorawfError as err:
            error = err
    if error is not None or result is None:
        assert error is not None
        _finish(recorder, display, settings, result, error, result.files if result else [])
        raise error
    _finish(recorder, display, settings, result, None, result.files)
    return result


def run_submission(settings: ServerSettings, workflow: Mapping[str, Any], options: SubmitOptions,
                   stream: Any = None) -> RunResult:
    """Submit ``workflow`` and follow it with a display; the call ``lorawf run`` makes after patching.

    Prints events (live, plain or NDJSON), downloads outputs with ``options.download``, always ends the
    event stream with a ``done`` event, and raises a :class:`~lorawf.errors.LorawfError` for every
    non-success (RunFailed, PromptRejected, ServerUnreachable, ProtocolError, PromptLost, Cancelled...),
    so the CLI group maps it to the exit code. Returns the result on success (or ``--no-wait``).
    """
    from lorawf.cli.display import make_display
    from lorawf.net.prompts import WaitOptions, submit_and_wait

    out = stream
    if out is None and not options.wait and not options.json_mode:
        out = sys.stderr  # stdout gets only the prompt id, for scripts
    display = make_display(options.json_mode, settings.secret_values(), options.verbose, out)
    recorder = _Recorder(display, options.observer)
    wait_options = WaitOptions.from_env(timeout=options.timeout, previews_dir=options.previews)
    result = _follow(settings, options, display, recorder, lambda: submit_and_wait(
        settings, workflow, recorder, wait=options.wait, options=wait_options, extra_data=options.extra_data))
    if not options.wait and not options.json_mode:
        click.echo(result.prompt_id)
    return result


def run_watch(settings: ServerSettings, prompt_id: str, options: SubmitOptions, stream: Any = None) -> RunResult:
    """Follow an existing prompt with a display (Ctrl-C only stops watching)."""
    from lorawf.cli.display import make_display
    from lorawf.net.prompts import WaitOptions, watch_prompt

    display = make_display(options.json_mode, settings.secret_values(), options.verbose, stream)
    recorder = _Recorder(display, options.observer)
    recorder.prompt_id = prompt_id
    wait_options = WaitOptions.from_env(timeout=options.timeout, previews_dir=options.previews)
    return _follow(settings, options, display, recorder,
                   lambda: watch_prompt(settings, prompt_id, recorder, options=wait_options))


# ------------------------------------------------------------------------------------------ options


def server_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--server``, ``--header`` (repeatable), ``--ca-bundle``, ``--insecure``."""
    func = click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate.")(func)
    func = click.option("--ca-bundle", type=click.Path(dir_okay=False), default=None,
                        help="Extra CA certificates (PEM) to verify the server's TLS certificate.")(func)
    func = click.option("--header", "headers", multiple=True, metavar="'Name: value'",
                        help="Extra header on every HTTP request and the websocket handshake (repeatable).")(func)
    func = click.option("--server", default=None, metavar="URL",
                        help="ComfyUI server (default: $LORAWF_SERVER, else http://127.0.0.1:8188). "
                             "$LORAWF_TOKEN is sent as a bearer token.")(func)
    return func


def wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``, ``--download``, ``--timeout``, ``--previews``, ``--verbose``."""
    func = click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")(func)
    func = click.option("--previews", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Save binary preview frames into this folder (default: ignore them).")(func)
    func = click.option("--timeout", type=float, default=None, metavar="S",
                        help="Give up waiting after S seconds (the prompt keeps running). Default: no limit.")(func)
    func = click.option("--download", type=click.Path(file_okay=False, path_type=Path), default=None,
                        metavar="DIR", help="Download every output file into DIR.")(func)
    func = click.option("--json", "json_mode", is_flag=True,
                        help="Print NDJSON events (schema lorawf.event/1); the last line is the outcome.")(func)
    return func


def settings_from(server: str | None, headers: tuple[str, ...], ca_bundle: str | None, insecure: bool
                  ) -> ServerSettings:
    return ServerSettings.resolve(server, headers, ca_bundle, insecure)


# ------------------------------------------------------------------------------------------ commands


@click.command("submit")
@click.argument("workflow", type=click.Path(dir_okay=True, path_type=Path))
@server_options
@click.option("--no-wait", is_flag=True, help="Queue the prompt, print its id and exit.")
@click.option("--no-preflight", is_flag=True,
              help="Do not check the workflow against the server's node schemas before posting.")
@wait_options
def submit_cmd(workflow: Path, server: str | None, headers: tuple[str, ...], ca_bundle: str | None,
               insecure: bool, no_wait: bool, no_preflight: bool, json_mode: bool, download: Path | None,
               timeout: float | None, previews: Path | None, verbose: bool) -> None:
    """Submit an API-format WORKFLOW and follow it to the end.

    \b
    Shows the current node, a step bar with rate and ETA and an overall bar over all training loops
    (plain log lines without a terminal, NDJSON with --json). Ctrl-C cancels the prompt: a pending
    one is removed from the queue, a running one is interrupted by its id. Exit codes: 0 success,
    1 run failed or interrupted, 4 rejected, 5 unreachable/protocol error/prompt lost, 130 cancelled.
    """
    settings = settings_from(server, headers, ca_bundle, insecure)
    graph = load_and_preflight(settings, workflow, no_preflight)
    run_submission(settings, graph, SubmitOptions(not no_wait, json_mode, download, timeout, previews, verbose))


def preflight_or_warn(settings: ServerSettings, graph: Mapping[str, Any], source: str,
                      schemas: Any = None) -> None:
    """Refuse (exit 4) a workflow the live server would reject; warn about what it would silently ignore."""
    from lorawf.comfy.preflight import gate
    from lorawf.net.schema_cache import server_schemas

    for problem in gate(graph, schemas or server_schemas(settings), source):
        click.echo(f"warning: {problem.render(source)}", err=True)


def load_and_preflight(settings: ServerSettings, path: Path, no_preflight: bool) -> dict[str, Any]:
    """Read an API- or UI-format workflow (UI converted with the server's schemas) and preflight it."""
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.net.schema_cache import server_schemas
    from lorawf.workflow.io import load_workflow

    schemas = bundled_schemas() if no_preflight else server_schemas(settings)
    graph, was_ui = load_workflow(path, schemas)
    if was_ui:
        click.echo(f"{path}: UI-format workflow converted to API format", err=True)
    if not no_preflight:
        preflight_or_warn(settings, graph, str(path), schemas)
    return graph


@click.command("watch")
@click.argument("prompt_id")
@server_options
@wait_options
def watch_cmd(prompt_id: str, server: str | None, headers: tuple[str, ...], ca_bundle: str | None,
              insecure: bool, json_mode: bool, download: Path | None, timeout: float | None,
              previews: Path | None, verbose: bool) -> None:
    """Follow PROMPT_ID to its end (or report it from history if it already finished).

    Ctrl-C only stops watching; use `lorawf cancel` to cancel the prompt.
    """
    settings = settings_from(server, headers, ca_bundle, insecure)
    run_watch(settings, prompt_id.strip(), SubmitOptions(True, json_mode, download, timeout, previews, verbose))


@click.command("queue")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON object (schema lorawf.queue/1).")
def queue_cmd(server: str | None, headers: tuple[str, ...], ca_bundle: str | None, insecure: bool,
              json_mode: bool) -> None:
    """Show running and pending prompts, pending ones in the order they will run."""
    from lorawf.comfy.events import running_items, sorted_pending
    from lorawf.net.http import fetch_queue

    settings = settings_from(server, headers, ca_bundle, insecure)
    queue = run_async(lambda: fetch_queue(settings))

    def row(item: list[Any]) -> dict[str, Any]:
        outputs = item[4] if len(item) > 4 and isinstance(item[4], list) else []
        return {"prompt_id": str(item[1]), "number": item[0], "outputs": [str(o) for o in outputs]}

    running = [row(it) for it in running_items(queue)]
    pending = [{"position": pos, **row(it)} for pos, it in enumerate(sorted_pending(queue), start=1)]
    if json_mode:
        click.echo(json.dumps({"schema": "lorawf.queue/1", "server": settings.redacted_url,
                               "running": running, "pending": pending}))
        return
    click.echo(f"server {settings.redacted_url}: {len(running)} running, {len(pending)} pending")
    for item in running:
        click.echo(f"  running  {item['prompt_id']}  number {item['number']}")
    for item in pending:
        click.echo(f"  {item['position']:>7}  {item['prompt_id']}  number {item['number']}")


@click.command("cancel")
@click.argument("prompt_id")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="Print the result as one lorawf.event/1 line.")
def cancel_cmd(prompt_id: str, server: str | None, headers: tuple[str, ...], ca_bundle: str | None,
               insecure: bool, json_mode: bool) -> None:
    """Cancel PROMPT_ID: remove it from the queue if pending, interrupt it (by id only) if running."""
    from lorawf.comfy.events import CancelDone
    from lorawf.net.prompts import cancel

    settings = settings_from(server, headers, ca_bundle, insecure)
    action, message = run_async(lambda: cancel(settings, prompt_id.strip()))
    if json_mode:
        click.echo(json.dumps(CancelDone(prompt_id, action, message).to_dict()))
    else:
        click.echo(message)


@click.command("run")
@click.argument("dataset", required=False, type=click.Path(path_type=Path))
@click.option("--token", required=True, help="Trigger token that replaces STYLE_TOKEN (class_tokens, prompts).")
@plan_options
@click.option("--upload", is_flag=True, help="Upload the dataset's images and captions to the server first.")
@click.option("--server-dataset-path", help="Dataset folder that already exists on the GPU host (no upload).")
@click.option("--server-input-dir", help="ComfyUI's input folder on the GPU host (default: learned from the server).")
@click.option("--server-output-dir", help="ComfyUI's output folder on the GPU host (default: learned from the server).")
@click.option("--template", type=click.Path(path_type=Path), help="Workflow template (default: bundled).")
@click.option("--set", "sets", multiple=True, metavar="NODE.input=VALUE", help="Set any other input. Repeatable.")
@click.option("--download", "download_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("lorawf-runs"), show_default=True,
              help="Local folder; each run gets its own subfolder with run.json, checkpoints, validation images.")
@click.option("--download-as-you-go", is_flag=True, help="Fetch each checkpoint as soon as it is written.")
@click.option("--name", help="Run name (default: TOKEN-<N>img-<UTC date-time>, unique).")
@click.option("--no-preflight", is_flag=True, help="Do not check the workflow against the server's schemas.")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (schema lorawf.event/1).")
@click.option("--timeout", type=float, default=None, metavar="S", help="Give up waiting after S seconds.")
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def run_cmd(dataset: Path | None, token: str, images: int | None, upload: bool, server_dataset_path: str | None,
            server_input_dir: str | None, server_output_dir: str | None, template: Path | None,
            sets: tuple[str, ...], download_root: Path, download_as_you_go: bool, name: str | None,
            no_preflight: bool, server: str | None, headers: tuple[str, ...], ca_bundle: str | None,
            insecure: bool, json_mode: bool, timeout: float | None, verbose: bool, **kwargs: Any) -> None:
    """Plan, patch, submit and follow a training run for DATASET; download its LoRA files.

    \b
    lorawf run ./my_style --token mystyle --server http://gpu:8188 --upload
    leaves lorawf-runs/<run>/ with checkpoints/, validation/, contact_sheet.png and run.json.
    """
    from lorawf.cli.display import scrub
    from lorawf.cli.offline import overrides_from
    from lorawf.runs.pipeline import RunRequest, execute_run

    settings = settings_from(server, headers, ca_bundle, insecure)
    request = RunRequest(
        token=token, dataset=dataset, images=images, overrides=overrides_from(kwargs), template=template,
        sets=sets, upload=upload, server_dataset_path=server_dataset_path, server_input_dir=server_input_dir,
        server_output_dir=server_output_dir, download_root=download_root, download_as_you_go=download_as_you_go,
        preflight=not no_preflight, name=name,
    )
    secrets = settings.secret_values()

    def echo(line: str) -> None:
        click.echo(scrub(line, secrets), err=True)

    def json_echo(obj: dict[str, Any]) -> None:
        from datetime import datetime, timezone

        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        click.echo(json.dumps({"schema": "lorawf.event/1", "prompt_id": None, **obj, "time": now}))

    run_dir = execute_run(settings, request, SubmitOptions(True, json_mode, None, timeout, None, verbose), echo,
                          json_echo if json_mode else None)
    echo(f"run folder: {run_dir}")


@click.command("resume")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--server-input-dir", help="ComfyUI's input folder on the GPU host (default: learned from the server).")
@click.option("--server-output-dir", help="ComfyUI's output folder on the GPU host (default: learned from the server).")
@click.option("--download-as-you-go", is_flag=True, help="Fetch each checkpoint as soon as it is written.")
@server_options
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (schema lorawf.event/1).")
@click.option("--timeout", type=float, default=None, metavar="S", help="Give up waiting after S seconds.")
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def resume_cmd(run_dir: Path, server_input_dir: str | None, server_output_dir: str | None,
               download_as_you_go: bool, server: str | None, headers: tuple[str, ...], ca_bundle: str | None,
               insecure: bool, json_mode: bool, timeout: float | None, verbose: bool) -> None:
    """Re-attach to the run recorded in RUN_DIR (after a closed laptop or a lost connection).

    Follows the prompt to its end, or reads the end from history, downloads every checkpoint and
    validation image still missing, redraws the contact sheet and updates run.json. The server is the
    one recorded in run.json unless --server is given. Ctrl-C only stops following.
    """
    from lorawf.runs.pipeline import resume_run
    from lorawf.runs.record import read_record

    recorded = read_record(run_dir).server_url
    settings = settings_from(server or recorded, headers, ca_bundle, insecure)
    resume_run(settings, run_dir, SubmitOptions(True, json_mode, None, timeout, None, verbose),
               server_input_dir, server_output_dir, download_as_you_go)
    click.echo(f"run folder: {run_dir}", err=True)


COMMANDS.extend([submit_cmd, watch_cmd, queue_cmd, cancel_cmd, run_cmd, resume_cmd])
