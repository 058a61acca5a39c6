"""Submit, follow and cancel one prompt: the I/O that carries out :mod:`lorawf.comfy.follow`'s decisions.

The algorithm is the one in docs/protocol.md's summary:

1. connect ``/ws?clientId=<fresh uuid4 hex>`` and wait for the first ``status`` frame carrying ``sid``;
2. ``POST /prompt`` with the graph, the ``client_id`` and a client-made canonical ``prompt_id``
   (the answer's id is authoritative);
3. fold every websocket message for that prompt; poll ``/history/{id}`` and ``/queue`` whenever the socket
   has been silent for a few seconds, right after connecting and after every drop;
4. reconnect with backoff and the *same* clientId, only after the old socket is fully closed;
5. finish only when ``/history/{id}`` confirms the outcome; a prompt that is neither queued, running nor in
   history is :class:`~lorawf.errors.PromptLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.comfy.events import (
    DEFAULT_LOOP_CLASSES,
    CancelDone,
    Event,
    Notice,
    OutputFile,
    Preview,
    Queued,
    RunState,
    WarningEvent,
    parse_binary_frame,
)
from lorawf.comfy.follow import (
    POLL_INTERVAL,
    CycleSocket,
    Fail,
    Finish,
    FollowPolicy,
    FollowTiming,
    PollHistory,
    PollQueue,
    Receive,
    Sleep,
)
from lorawf.comfy.node_errors import render_node_errors
from lorawf.errors import (
    Cancelled,
    LorawfError,
    PromptLost,
    ProtocolError,
    ServerError,
    ServerUnreachable,
)
from lorawf.fsutil import atomic_write_bytes
from lorawf.net.api import JsonApi, Sink
from lorawf.net.limits import INBOX_SIZE

if TYPE_CHECKING:
    from lorawf.net.socket import EventSocket

# ------------------------------------------------------------------------------------- the waiter


@dataclass
class WaitOptions:
    """How to wait. ``timeout`` is the opt-in overall limit; there is no per-message idle timeout."""

    timeout: float | None = None
    poll_interval: float = POLL_INTERVAL
    resubscribe_after: float = 60.0
    grace: float = 300.0
    previews_dir: Path | None = None
    loop_classes: frozenset[str] = DEFAULT_LOOP_CLASSES

    @property
    def timing(self) -> FollowTiming:
        return FollowTiming(self.poll_interval, self.resubscribe_after, self.grace, self.timeout)

    @classmethod
    def from_env(cls, **kwargs: Any) -> WaitOptions:
        """Defaults, with test/tuning overrides from ``LORAWF_POLL_INTERVAL`` and ``LORAWF_RETRY_GRACE``."""
        opts = cls(**kwargs)
        for env, attr in (("LORAWF_POLL_INTERVAL", "poll_interval"), ("LORAWF_RETRY_GRACE", "grace")):
            raw = os.environ.get(env)
            if raw:
                with contextlib.suppress(ValueError):
                    setattr(opts, attr, max(0.05, float(raw)))
        return opts


@dataclass
class RunResult:
    """How a wait ended. ``outcome`` is success, failed, interrupted or submitted (``--no-wait``)."""

    prompt_id: str
    outcome: str
    state: RunState
    message: str
    files: list[OutputFile] = field(default_factory=list)
    number: float | None = None


class _Follower:
    """Carries out a :class:`FollowPolicy`'s actions: requests, socket reads, previews. Decides nothing."""

    def __init__(self, client: JsonApi, socket: EventSocket | None, state: RunState, sink: Sink,
                 options: WaitOptions, inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        self.client = client
        self.socket = socket
        self.sink = sink
        self.options = options
        self.inbox = inbox
        self.loop = asyncio.get_running_loop()
        self.policy = FollowPolicy(state, options.timing, now=self.loop.time(), where=client.where,
                                   socket_connected=socket is not None)
        self.previews = 0
        self.getter: asyncio.Future[tuple[str, Any]] | None = None
        self.drained = 0

    def emit(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Preview) and event.path is None:
                continue  # previews are only reported when saved
            self.sink(event)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.close()

    async def _run(self) -> None:
        policy, client, pid = self.policy, self.client, self.policy.prompt_id
        clock = self.loop.time
        while True:
            now = clock()
            action = policy.next_action(now)
            if isinstance(action, Receive):  # nearly always: the next socket item
                item = await self.next_item(action.until - now)
                if item is not None:
                    self.feed(*item)
                continue
            if isinstance(action, Finish):
                return
            if isinstance(action, Fail):
                raise action.error
            if isinstance(action, (PollHistory, PollQueue)):
                try:
                    if isinstance(action, PollHistory):
                        entry = await client.get_history(pid)
                        self.emit(policy.history(entry, self.loop.time()))
                    else:
                        queue = await client.get_queue()
                        self.emit(policy.queue(queue, self.loop.time()))
                except (ServerUnreachable, ProtocolError) as exc:
                    self.emit(policy.request_failed(exc, self.loop.time()))
            elif isinstance(action, CycleSocket):
                if self.socket is not None:
                    await self.socket.cycle()
            elif isinstance(action, Sleep):
                await asyncio.sleep(max(0.0, action.until - self.loop.time()))

    def feed(self, kind: str, payload: Any) -> None:
        now = self.loop.time()
        if kind == "msg":
            self.emit(self.policy.message(payload, now))
        elif kind == "bin":
            self.on_binary(payload, now)
        elif kind == "closed":
            self.emit(self.policy.dropped(str(payload), now))
        elif kind == "reconnected":
            self.emit(self.policy.reconnected(now))
        elif kind == "bad":
            self.emit(self.policy.bad_frame(str(payload)))

    async def next_item(self, wait: float) -> tuple[str, Any] | None:
        """The next inbox item, or ``None`` after ``wait`` seconds.

        ``asyncio.wait`` rather than ``wait_for``: on Python < 3.12, ``wait_for`` can swallow a
        cancellation (our Ctrl-C) when the item arrives at the same moment.
        """
        if self.getter is None:
            # Fast path for a backlog: no future per message. Yield now and then so Ctrl-C gets through.
            self.drained += 1
            if self.drained % 256 == 0:
                await asyncio.sleep(0)
            try:
                return self.inbox.get_nowait()
            except asyncio.QueueEmpty:
                pass
            if wait <= 0:
                return None
            self.getter = asyncio.ensure_future(self.inbox.get())
        done, _ = await asyncio.wait({self.getter}, timeout=max(0.0, wait))
        if not done:
            return None
        item, self.getter = self.getter.result(), None
        return item

    def close(self) -> None:
        if self.getter is not None:
            self.getter.cancel()
            self.getter = None

    def on_binary(self, frame: bytes, now: float) -> None:
        header = parse_binary_frame(frame)
        if header is None:
            self.emit(self.policy.bad_frame(f"ignored a malformed binary frame of {len(frame)} bytes"))
            return
        events = self.policy.binary(header, now)
        if events and self.options.previews_dir is not None:
            self.previews += 1
            ext = {"image/png": "png", "image/jpeg": "jpg"}.get(header.image_type or "", "bin")
            path = Path(self.options.previews_dir) / f"preview_{self.policy.prompt_id[:8]}_{self.previews:05d}.{ext}"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, frame[header.payload_offset:])
            except OSError as exc:
                self.sink(WarningEvent(self.policy.prompt_id, "preview_not_saved",
                                       f"cannot save preview {path}: {exc.strerror or exc}"))
                return
            ev = events[0]
            assert isinstance(ev, Preview)
            self.sink(Preview(ev.prompt_id, ev.node, ev.image_type, ev.bytes, str(path)))


def _result(state: RunState, number: float | None = None) -> RunResult:
    outcome = state.outcome or "failed"
    return RunResult(state.prompt_id, outcome, state, state.describe_outcome(), state.files(), number)


async def _cancel_after_interrupt(client: JsonApi, state: RunState, sink: Sink) -> Cancelled:
    """Ctrl-C while waiting: cancel our prompt, report what was done, return the error to raise.

    The cancel runs to its end even when Ctrl-C is pressed again meanwhile: a second Ctrl-C must not leave
    the prompt running on the server while the user believes it was cancelled.
    """
    task = asyncio.current_task()
    _uncancel(task)
    job = asyncio.ensure_future(_cancel_and_read_back(client, state, sink))
    while True:
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            if job.cancelled():
                raise
            _uncancel(task)
            sink(Notice(state.prompt_id, f"still cancelling prompt {state.prompt_id} on the server; "
                                         "lorawf exits as soon as it is removed or interrupted", warning=True))


def _uncancel(task: asyncio.Task[Any] | None) -> None:
    """Take back one cancellation request (Python 3.11+), so the awaits of the cancel itself run."""
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


async def _cancel_and_read_back(client: JsonApi, state: RunState, sink: Sink) -> Cancelled:
    try:
        action, message = await cancel_prompt(client, state.prompt_id)
    except LorawfError as exc:
        return Cancelled(f"stopped waiting, but could not cancel prompt {state.prompt_id}: {exc}")
    sink(CancelDone(state.prompt_id, action, message))
    if action == "interrupted":
        entry = None
        with contextlib.suppress(LorawfError):
            entry = await client.get_history(state.prompt_id)
        if entry:
            state.feed_history(entry)
    return Cancelled(message)


def _check_extra_data(extra_data: Mapping[str, Any] | None, sink: Sink, prompt_id: str) -> dict[str, Any] | None:
    if not extra_data:
        return None
    data = dict(extra_data)
    pnginfo = data.get("extra_pnginfo")
    if pnginfo is not None and not (isinstance(pnginfo, Mapping) and isinstance(pnginfo.get("workflow"), Mapping)):
        # FluxTrainer's Init node fails with KeyError: 'workflow' on such an extra_pnginfo.
        del data["extra_pnginfo"]
        sink(WarningEvent(prompt_id, "extra_pnginfo_dropped",
                          "extra_pnginfo without a 'workflow' object was not sent (FluxTrainer fails on it)"))
    return data or None


async def submit_and_wait(
    client: JsonApi,
    workflow: Mapping[str, Any],
    sink: Sink,
    *,
    wait: bool = True,
    options: WaitOptions | None = None,
    extra_data: Mapping[str, Any] | None = None,
) -> RunResult:
    """Submit an API-format ``workflow`` and (unless ``wait`` is false) follow it to its confirmed end.

    Every step is reported to ``sink`` as an :class:`~lorawf.comfy.events.Event` (the caller emits ``done``).
    Returns for success, failed and interrupted runs; raises :class:`PromptRejected` (400),
    :class:`ServerUnreachable`, :class:`ProtocolError`, :class:`PromptLost`, :class:`WaitTimeout`, and
    :class:`Cancelled` after cancelling our prompt when the waiting task is cancelled (Ctrl-C).
    """
    options = options or WaitOptions()
    client_id = uuid.uuid4().hex
    prompt_id = str(uuid.uuid4())
    extra = _check_extra_data(extra_data, sink, prompt_id)
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(INBOX_SIZE)
    socket = None
    if wait:
        from lorawf.net.socket import EventSocket  # not for --no-wait: the websockets import costs 15 ms

        socket = EventSocket(client.settings, client_id, client.ssl_context, inbox)
    state = RunState(prompt_id, workflow, loop_classes=options.loop_classes)
    submitted = False
    try:
        if socket is not None:
            await socket.open()
        submitted = True  # from here on, the server may have our prompt: a Ctrl-C must cancel it
        result = await client.post_prompt(workflow, client_id, prompt_id, extra)
        if result.prompt_id != prompt_id:  # old servers ignore ours: theirs is authoritative
            state = RunState(result.prompt_id, workflow, loop_classes=options.loop_classes)
        state.number = result.number
        sink(Queued(state.prompt_id, result.number, None))
        if result.node_errors:
            lines = render_node_errors(result.node_errors)
            sink(WarningEvent(state.prompt_id, "node_errors",
                              "some outputs failed validation and will not run: "
                              + "; ".join(line.strip() for line in lines)))
        if not wait:
            return RunResult(state.prompt_id, "submitted", state,
                             f"prompt {state.prompt_id} queued (number {result.number})", [], result.number)
        await _Follower(client, socket, state, sink, options, inbox).run()
        return _result(state, result.number)
    except asyncio.CancelledError:
        if not submitted:
            raise Cancelled("cancelled before anything was submitted") from None
        raise await _cancel_after_interrupt(client, state, sink) from None
    finally:
        if socket is not None:
            await socket.close()


async def watch_prompt(client: JsonApi, prompt_id: str, sink: Sink, *,
                       options: WaitOptions | None = None) -> RunResult:
    """Follow a prompt someone already queued: report it from history if finished, else wait for its end.

    The websocket reuses the prompt's own ``client_id`` (from ``/queue``), because run events go only to
    that id; the ``/history`` + ``/queue`` backstop guarantees the end even if the original submitter is
    still connected. Cancelling this coroutine only stops watching.
    """
    options = options or WaitOptions()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(INBOX_SIZE)
    entry = await client.get_history(prompt_id)
    if entry:
        workflow = _workflow_of(entry.get("prompt"))
        state = RunState(prompt_id, workflow, loop_classes=options.loop_classes)
        sink_all(sink, state.feed_history(entry))
        return _result(state)
    queue = await client.get_queue()
    item = next((it for key in ("queue_running", "queue_pending") for it in queue.get(key) or []
                 if isinstance(it, list) and len(it) >= 2 and it[1] == prompt_id), None)
    if item is None:
        entry = await client.get_history(prompt_id)
        if not entry:
            raise PromptLost(f"prompt {prompt_id} is not queued, running or in the history of {client.where}")
        state = RunState(prompt_id, _workflow_of(entry.get("prompt")), loop_classes=options.loop_classes)
        sink_all(sink, state.feed_history(entry))
        return _result(state)
    state = RunState(prompt_id, _workflow_of(item), loop_classes=options.loop_classes)
    state.number = item[0]
    extra = item[3] if len(item) > 3 and isinstance(item[3], Mapping) else {}
    client_id = str(extra.get("client_id") or uuid.uuid4().hex)
    from lorawf.net.socket import EventSocket

    socket: EventSocket | None = EventSocket(client.settings, client_id, client.ssl_context, inbox)
    try:
        assert socket is not None
        try:
            await socket.open()
        except ServerError as exc:
            sink(WarningEvent(prompt_id, "no_websocket", f"{exc}; following by polling only"))
            socket = None
        await _Follower(client, socket, state, sink, options, inbox).run()
        return _result(state, state.number)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()
        raise Cancelled(f"stopped watching; prompt {prompt_id} continues on the server",
                        hint=f"`lorawf cancel {prompt_id}` cancels it") from None
    finally:
        if socket is not None:
            await socket.close()


def sink_all(sink: Sink, events: Sequence[Event]) -> None:
    for event in events:
        sink(event)


def _workflow_of(item: Any) -> dict[str, Any] | None:
    if isinstance(item, list) and len(item) > 2 and isinstance(item[2], dict):
        return item[2]
    return None


# ----------------------------------------------------------------------------------------- cancel


async def cancel_prompt(client: JsonApi, prompt_id: str, *, settle: float = 10.0) -> tuple[str, str]:
    """Cancel one prompt: delete it if pending, interrupt it *by id* if running (never a global interrupt).

    Returns ``(action, message)`` with action ``deleted``, ``interrupted`` or ``none``.
    Raises :class:`PromptLost` when the id is unknown to the server.
    """
    state = RunState(prompt_id)
    queue = await client.get_queue()
    where = state.in_queue(queue)
    if where == "pending":
        await client.post_empty("/queue", {"delete": [prompt_id]})
        queue = await client.get_queue()
        where = state.in_queue(queue)
        if where is None:
            return "deleted", f"removed pending prompt {prompt_id} from the queue"
    if where == "running":
        await client.post_empty("/interrupt", {"prompt_id": prompt_id})
        loop = asyncio.get_running_loop()
        end = loop.time() + settle
        while loop.time() < end:
            await asyncio.sleep(0.1)
            if state.in_queue(await client.get_queue()) != "running":
                return "interrupted", f"interrupted running prompt {prompt_id}"
        return "interrupted", f"sent an interrupt to running prompt {prompt_id} (it has not stopped yet)"
    if where == "pending":
        return "none", f"prompt {prompt_id} is still pending after a delete request"
    entry = await client.get_history(prompt_id)
    if entry:
        raw_status = entry.get("status")
        status: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
        return "none", f"prompt {prompt_id} already finished ({status.get('status_str', 'done')}); nothing to cancel"
    raise PromptLost(f"prompt {prompt_id} is not queued, running or in the history of {client.where}")
