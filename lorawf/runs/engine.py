"""The engine beneath every command: submit, watch, cancel and read the queue, as async functions.

Each function takes the server settings and a *reporter* (any callable that receives typed
:class:`~lorawf.comfy.events.Event` objects: the same events ``--json`` prints) and opens one
:class:`~lorawf.net.http.ComfyClient` (one connection pool) for the whole call. The engine never prints
and never imports the command line; the CLI's displays are reporters.

A followed prompt always ends its event stream with one ``done`` event, then every non-success is
raised as a :class:`~lorawf.errors.LorawfError` (the CLI maps it to the exit code with
:func:`~lorawf.errors.exit_code_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lorawf.comfy.events import CancelDone, Done, ErrorEvent, Event, Notice
from lorawf.errors import (
    Cancelled,
    LorawfError,
    ProtocolError,
    RunFailed,
    ServerRejected,
    exit_code_for,
    outcome_for,
)
from lorawf.net.settings import ServerSettings

if TYPE_CHECKING:  # httpx and websockets load with the first request, not with `lorawf --help`
    from lorawf.comfy.preflight import Problem
    from lorawf.comfy.schema import SchemaSet
    from lorawf.net.api import JsonApi
    from lorawf.net.http import ComfyClient
    from lorawf.net.prompts import RunResult, WaitOptions
    from lorawf.net.quick import QuickClient


class Reporter(Protocol):
    """Receives every event of a command, in order (a display, a recorder, a test's list)."""

    def __call__(self, event: Event, /) -> None: ...


@dataclass(frozen=True)
class FollowOptions:
    """How to follow a prompt: wait or not, download its outputs, give up after ``timeout`` seconds."""

    wait: bool = True
    download: Path | None = None
    timeout: float | None = None
    previews: Path | None = None
    extra_data: Mapping[str, Any] | None = None

    def wait_options(self) -> WaitOptions:
        from lorawf.net.prompts import WaitOptions

        return WaitOptions.from_env(timeout=self.timeout, previews_dir=self.previews)


#: Runs after the wait ends, success or not, before the ``done`` event; returns download problems.
AfterRun = Callable[["RunResult | None", "LorawfError | None", Reporter], Awaitable[list[str]]]


class PromptTracker:
    """Passes events on; remembers the prompt id they name and whether the ``done`` event went out."""

    def __init__(self, reporter: Reporter, prompt_id: str | None = None) -> None:
        self.reporter = reporter
        self.prompt_id = prompt_id
        self.done_sent = False

    def __call__(self, event: Event, /) -> None:
        if event.prompt_id and self.prompt_id is None or event.kind == "queued":
            self.prompt_id = event.prompt_id
        if isinstance(event, Done):
            self.done_sent = True
        self.reporter(event)


def report_failure(reporter: Reporter, error: LorawfError, settings: ServerSettings,
                   prompt_id: str | None = None, result: RunResult | None = None) -> None:
    """The end of a failed command's event stream: the rejection (if it was one), then ``done``."""
    if isinstance(error, ServerRejected):
        message = settings.secrets.scrub(str(error).splitlines()[0])
        reporter(ErrorEvent(prompt_id, "rejected", message, node_errors=tuple(getattr(error, "node_errors", ()))))
    reporter(done_event(prompt_id, result, error, settings))


@contextlib.asynccontextmanager
async def ending_with_done(reporter: Reporter, settings: ServerSettings) -> AsyncIterator[PromptTracker]:
    """Every command's event stream ends with ``done``: a failure before the prompt existed (preflight,
    an unreachable server, a refused upload, Ctrl-C) is reported too, then raised. A cancellation that no
    step turned into an error becomes :class:`~lorawf.errors.Cancelled`."""
    tracker = PromptTracker(reporter)
    try:
        yield tracker
    except LorawfError as err:
        if not tracker.done_sent:
            report_failure(tracker, err, settings, tracker.prompt_id)
        raise
    except asyncio.CancelledError:
        cancelled = Cancelled("cancelled")
        if not tracker.done_sent:
            report_failure(tracker, cancelled, settings, tracker.prompt_id)
        raise cancelled from None


def done_event(prompt_id: str | None, result: RunResult | None, error: LorawfError | None,
               settings: ServerSettings) -> Done:
    """The last event of a followed prompt: outcome, exit code, one scrubbed line, every output file."""
    files = tuple(result.files) if result is not None else ()
    if error is None:
        assert result is not None
        return Done(result.prompt_id, result.outcome, 0, result.message, files)
    message = settings.secrets.scrub(str(error).splitlines()[0])
    outcome = result.outcome if isinstance(error, RunFailed) and result else outcome_for(error)
    return Done(prompt_id, outcome, exit_code_for(error), message, files)


async def follow_to_done(client: JsonApi, reporter: Reporter,
                         wait: Callable[[Reporter], Awaitable[RunResult]], *, download: Path | None = None,
                         after_run: AfterRun | None = None, prompt_id: str | None = None) -> RunResult:
    """Run ``wait`` (submit-and-wait or watch), then ``after_run``, the downloads and the ``done`` event.

    Raises a :class:`~lorawf.errors.LorawfError` for every non-success, after the ``done`` event.
    """
    tracker = PromptTracker(reporter, prompt_id)
    result: RunResult | None = None
    error: LorawfError | None = None
    try:
        result = await wait(tracker)
    except LorawfError as err:
        error = err
    problems: list[str] = []
    if after_run is not None:
        try:
            problems = await after_run(result, error, tracker)
        except LorawfError as err:
            error = error or err
    if error is None and result is not None:
        try:
            await _conclude(client, result, download, tracker, problems)
        except LorawfError as err:
            error = err
    if error is not None:
        report_failure(tracker, error, client.settings, tracker.prompt_id, result)
        raise error
    tracker(done_event(tracker.prompt_id, result, None, client.settings))
    assert result is not None
    return result


async def _conclude(client: JsonApi, result: RunResult, download: Path | None, reporter: Reporter,
                    problems: list[str]) -> None:
    """Download outputs if asked, then turn a failed/interrupted run into :class:`RunFailed`."""
    problems = list(problems)
    if download is not None and result.files:
        from lorawf.net.download import download_outputs  # only then: an import here delays every run's end
        from lorawf.net.http import ComfyClient

        assert isinstance(client, ComfyClient), "downloads need the streaming client (client_for with wait)"

        problems += await download_outputs(client, result.files, download, reporter, result.prompt_id)
    if result.outcome in ("failed", "interrupted"):
        raise RunFailed(result.message)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProtocolError(f"{len(problems)} output file(s) not downloaded: {problems[0]}{more}")


# ------------------------------------------------------------------------------------------ preflight


async def gate_workflow(client: JsonApi, graph: Mapping[str, Any], source: str, reporter: Reporter,
                        schemas: SchemaSet | None = None) -> None:
    """Refuse (exit 4) a workflow the live server would reject; report what it would silently ignore."""
    from lorawf.comfy.preflight import gate
    from lorawf.net.schema_cache import load_server_schemas

    _warn(reporter, gate(graph, schemas or await load_server_schemas(client), source), source)


def _warn(reporter: Reporter, problems: list[Problem], source: str) -> None:
    """What the server would let through silently, one warning notice each."""
    for problem in problems:
        reporter(Notice(None, problem.render(source), warning=True))


async def load_for_submit(client: JsonApi, path: Path, reporter: Reporter, *,
                          preflight: bool = True) -> dict[str, Any]:
    """Read an API- or UI-format workflow (UI converted with the server's schemas) and preflight it."""
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.workflow.io import load_workflow

    problems: list[Problem] = []
    if preflight:
        graph, was_ui, problems = await _preflighted(client, path)
    else:
        graph, was_ui = load_workflow(path, bundled_schemas())
    if was_ui:
        reporter(Notice(None, f"{path}: UI-format workflow converted to API format"))
    _warn(reporter, problems, str(path))
    return graph


async def _preflighted(client: JsonApi, path: Path) -> tuple[dict[str, Any], bool, list[Problem]]:
    """The workflow, whether it was a UI file, and what the server would ignore (raises for what it rejects).

    It starts from the schemas cached for this server, without a request (the server validates the prompt
    again when it arrives, so a stale cache cannot let anything through); no cache, a UI file to convert or
    anything found makes it ask the server (a fresh ``/object_info``) and check again before anything is said.
    Over a 50 ms round trip that is one round trip less before every submit (docs/bench.md).
    """
    from lorawf.comfy.preflight import gate
    from lorawf.errors import PreflightRejected
    from lorawf.net.schema_cache import cached_server_schemas, load_server_schemas
    from lorawf.workflow.io import load_workflow

    cached = cached_server_schemas(client.settings.redacted_url)
    if cached is not None:
        graph, was_ui = load_workflow(path, cached)
        if not was_ui:
            with contextlib.suppress(PreflightRejected):
                if not gate(graph, cached, str(path)):
                    return graph, was_ui, []
    schemas = await load_server_schemas(client, refresh=cached is not None)
    graph, was_ui = load_workflow(path, schemas)
    return graph, was_ui, gate(graph, schemas, str(path))


# ------------------------------------------------------------------------------------------ commands


def client_for(settings: ServerSettings, wait: bool = True) -> ComfyClient | QuickClient:
    """The client of one command: httpx's pooled client, or for a command that only submits and leaves
    (``--no-wait``, no proxy in the way) the one-connection :class:`~lorawf.net.quick.QuickClient`, which
    starts without importing httpx (docs/bench.md)."""
    if not wait:
        from lorawf.net.quick import QuickClient

        if QuickClient.usable(settings):
            return QuickClient(settings)
    from lorawf.net.http import ComfyClient

    return ComfyClient(settings)


async def submit(settings: ServerSettings, workflow: Mapping[str, Any] | Path, reporter: Reporter,
                 options: FollowOptions | None = None, *, preflight: bool = True) -> RunResult:
    """Submit a workflow (a graph, or a file that is read and preflighted first) and follow it to its end.

    Reports every event and a final ``done``; downloads outputs into ``options.download``; raises for
    every non-success (RunFailed, PromptRejected, ServerUnreachable, ProtocolError, PromptLost,
    Cancelled...). Returns the result on success, or at once with ``options.wait`` false.
    """
    options = options or FollowOptions()
    async with ending_with_done(reporter, settings) as tracker, client_for(settings, options.wait) as client:
        graph = await load_for_submit(client, workflow, tracker, preflight=preflight) \
            if isinstance(workflow, Path) else workflow
        return await submit_graph(client, graph, tracker, options)


async def submit_graph(client: JsonApi, graph: Mapping[str, Any], reporter: Reporter,
                       options: FollowOptions, after_run: AfterRun | None = None) -> RunResult:
    """:func:`submit` of a graph on an open client (``lorawf run`` submits with its own ``after_run``)."""
    from lorawf.net.prompts import submit_and_wait

    wait_options = options.wait_options()
    return await follow_to_done(
        client, reporter,
        lambda sink: submit_and_wait(client, graph, sink, wait=options.wait, options=wait_options,
                                     extra_data=options.extra_data),
        download=options.download, after_run=after_run)


async def watch(settings: ServerSettings, prompt_id: str, reporter: Reporter,
                options: FollowOptions | None = None) -> RunResult:
    """Follow an existing prompt to its end, or report it from history (cancelling only stops watching)."""
    from lorawf.net.http import ComfyClient

    async with ending_with_done(reporter, settings) as tracker, ComfyClient(settings) as client:
        tracker.prompt_id = prompt_id
        return await watch_on(client, prompt_id, tracker, options or FollowOptions())


async def watch_on(client: JsonApi, prompt_id: str, reporter: Reporter, options: FollowOptions,
                   after_run: AfterRun | None = None) -> RunResult:
    """:func:`watch` on an open client (``lorawf resume`` watches with its own ``after_run``)."""
    from lorawf.net.prompts import watch_prompt

    wait_options = options.wait_options()
    return await follow_to_done(client, reporter,
                                lambda sink: watch_prompt(client, prompt_id, sink, options=wait_options),
                                download=options.download, after_run=after_run, prompt_id=prompt_id)


async def cancel(settings: ServerSettings, prompt_id: str) -> CancelDone:
    """Cancel one prompt: delete it if pending, interrupt it by id if running (never a global interrupt)."""
    from lorawf.net.http import ComfyClient
    from lorawf.net.prompts import cancel_prompt

    async with ComfyClient(settings) as client:
        action, message = await cancel_prompt(client, prompt_id)
    return CancelDone(prompt_id, action, message)


async def queue(settings: ServerSettings) -> dict[str, Any]:
    """The server's ``/queue`` answer."""
    from lorawf.net.http import fetch_queue

    return await fetch_queue(settings)


async def object_info(settings: ServerSettings) -> dict[str, Any]:
    """The server's ``/object_info`` answer, uncached (for ``lorawf object-info``)."""
    from lorawf.net.http import fetch_object_info

    return await fetch_object_info(settings)
