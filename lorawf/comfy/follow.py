"""The follow policy: when to poll, when to cycle a silent socket, when a prompt is lost or over. Pure.

Sans-I/O, after websockets' protocol objects: :class:`FollowPolicy` is fed what happened (a websocket
message, a poll answer, a failed request, a drop, a reconnect, each with the time it happened) and
:meth:`FollowPolicy.next_action` says what to do next. The driver (:mod:`lorawf.net.prompts`) only carries
actions out and feeds the results back, so every rule here is tested with a fake clock on recorded
transcripts (tests/test_follow.py), in milliseconds.

The rules (docs/protocol.md, "Following a prompt"):

* poll ``/history/{id}`` when following starts, after every drop and reconnect, and whenever the socket
  has said nothing about our prompt for ``poll_interval`` seconds; a miss in history is followed by
  ``/queue``; a prompt in neither (checked twice, history again last) is lost;
* a terminal message is confirmed from history, retried with :func:`backoff` while the entry is still
  missing (ComfyUI writes history just after it sends the message);
* a running prompt whose socket has been silent for ``resubscribe_after`` seconds gets its socket cycled
  (a server can drop a client's registration without closing the connection);
* a failing server is tolerated for ``grace`` seconds, then the request's own error ends the wait;
* ``timeout`` (opt-in) bounds the whole wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorawf.comfy.events import BinaryFrame, Event, RunState, WarningEvent
from lorawf.comfy.values import FieldValue
from lorawf.errors import LorawfError, PromptLost, WaitTimeout

#: Seconds of socket silence (about our prompt) after which ``/history`` and ``/queue`` are polled.
POLL_INTERVAL = 3.0
#: History reads after a terminal message before falling back to a full poll.
CONFIRM_ATTEMPTS = 40


def backoff(attempt: int, *, first: float = 0.05, factor: float = 2.0, cap: float = 1.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``first * factor**attempt``, at most ``cap``."""
    if attempt <= 0:
        return min(first, cap)
    # Bounded exponent: never an OverflowError, however long a server stays away.
    return min(first * factor ** min(attempt, 64), cap)


def reconnect_delay(attempt: int) -> float:
    """The websocket's reconnect backoff: 0.5 s, doubling, at most 30 s."""
    return backoff(attempt, first=0.5, cap=30.0)


@dataclass(frozen=True, eq=False, repr=False)
class FollowTiming(FieldValue):
    """The policy's clock settings, in seconds. ``timeout`` ``None`` waits for as long as it takes."""

    poll_interval: float = POLL_INTERVAL
    resubscribe_after: float = 60.0
    grace: float = 300.0
    timeout: float | None = None
    confirm_attempts: int = CONFIRM_ATTEMPTS


# ------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True, eq=False, repr=False)
class PollHistory(FieldValue):
    """``GET /history/{prompt_id}``; feed the answer to :meth:`FollowPolicy.history`."""


@dataclass(frozen=True, eq=False, repr=False)
class PollQueue(FieldValue):
    """``GET /queue``; feed the answer to :meth:`FollowPolicy.queue`."""


@dataclass(frozen=True, eq=False, repr=False)
class CycleSocket(FieldValue):
    """Close the websocket cleanly and reconnect with the same clientId (re-registers the sid)."""


@dataclass(frozen=True, eq=False, repr=False)
class Receive(FieldValue):
    """Wait for the next socket item until ``until``; at ``until`` with nothing, just ask again."""

    until: float


@dataclass(frozen=True, eq=False, repr=False)
class Sleep(FieldValue):
    """Wait until ``until`` without reading the socket (between history reads while confirming)."""

    until: float


@dataclass(frozen=True, eq=False, repr=False)
class Finish(FieldValue):
    """The outcome is confirmed from history: stop following."""


@dataclass(frozen=True, eq=False, repr=False)
class Fail(FieldValue):
    """Stop following with ``error`` (lost, timed out, or the server stayed away past the grace time)."""

    error: LorawfError


Action = PollHistory | PollQueue | CycleSocket | Receive | Sleep | Finish | Fail


# ------------------------------------------------------------------------------------------- policy

# What the policy is doing: waiting for input, or in one of the request sequences.
_IDLE, _POLL_HISTORY, _POLL_QUEUE, _RECHECK, _CONFIRM, _CONFIRM_PAUSE = range(6)


class FollowPolicy:
    """Follow one prompt. Every input returns the events to report; :meth:`next_action` says what next.

    ``where`` names the server in messages (``http://host:8188``). ``now`` is the driver's clock
    (``loop.time()`` there, a plain number in tests); the policy never reads a clock itself.
    """

    def __init__(self, state: RunState, timing: FollowTiming, *, now: float, where: str,
                 socket_connected: bool = True) -> None:
        self.state = state
        self.timing = timing
        self.where = where
        self.socket_connected = socket_connected
        self.deadline = now + timing.timeout if timing.timeout else None
        self._step = _POLL_HISTORY  # following starts with a poll
        self._last_relevant = now
        self._last_poll = now
        self._relevant_after_poll = False
        self._confirm_attempt = 0
        self._pause_until = now
        self._trouble_since: float | None = None
        self._failure: LorawfError | None = None

    @property
    def prompt_id(self) -> str:
        return self.state.prompt_id

    # -- what next --------------------------------------------------------------------------------
    def next_action(self, now: float) -> Action:
        """What the driver does next. Calling it again without feeding anything returns the same."""
        if self._failure is not None:
            return Fail(self._failure)
        if self.state.confirmed:
            return Finish()
        if self._step in (_POLL_HISTORY, _RECHECK, _CONFIRM):
            return PollHistory()
        if self._step == _POLL_QUEUE:
            return PollQueue()
        if self._step == _CONFIRM_PAUSE:
            if now < self._pause_until:
                return Sleep(self._pause_until)
            self._step = _CONFIRM
            return PollHistory()
        if self.deadline is not None and now >= self.deadline:
            where = {"queued": "still queued", "running": "still running"}.get(self.state.phase, "not finished")
            assert self.timing.timeout is not None
            self._failure = WaitTimeout(
                f"gave up waiting after {self.timing.timeout:g} s; prompt {self.prompt_id} is {where} on the server",
                hint=f"`lorawf watch {self.prompt_id}` to follow it again")
            return Fail(self._failure)
        if self.socket_connected and self.state.phase == "running" and \
                now - self._last_relevant >= self.timing.resubscribe_after:
            self._last_relevant = now
            return CycleSocket()
        due = max(self._last_relevant, self._last_poll) + self.timing.poll_interval
        if now >= due:
            self._step = _POLL_HISTORY
            return PollHistory()
        return Receive(due if self.deadline is None else min(due, self.deadline))

    # -- the socket ---------------------------------------------------------------------------------
    def message(self, message: Mapping[str, Any], now: float) -> list[Event]:
        """A websocket JSON message (for any prompt: the fold ignores other prompts' messages)."""
        events = self.state.feed(message)
        data = message.get("data")
        if events or (isinstance(data, Mapping) and data.get("prompt_id") == self.prompt_id):
            self._last_relevant = now
        if (self.state.outcome is not None or self.state.done_signal) and not self.state.confirmed \
                and self._step == _IDLE:
            self._step, self._confirm_attempt = _CONFIRM, 0
        return events

    def binary(self, frame: BinaryFrame, now: float) -> list[Event]:
        """A binary frame (a preview); saving its bytes is the driver's business."""
        return self.state.feed_binary(frame)

    def dropped(self, reason: str, now: float) -> list[Event]:
        """The socket closed; it is reconnecting with the same clientId."""
        self.socket_connected = False
        self._start_poll()
        return [self._warning("connection_lost", f"websocket {reason}; reconnecting with the same clientId")]

    def reconnected(self, now: float) -> list[Event]:
        self.socket_connected = True
        self._start_poll()
        self._relevant_after_poll = True
        return [self._warning("reconnected", "websocket reconnected")]

    def bad_frame(self, reason: str) -> list[Event]:
        return [self._warning("bad_message", reason)]

    # -- answers to our requests ----------------------------------------------------------------------
    def history(self, entry: Mapping[str, Any] | None, now: float) -> list[Event]:
        """The ``/history/{id}`` answer (``None`` or empty: not in history yet)."""
        events = self._server_answered()
        if entry:
            events += self.state.feed_history(entry)
            self._end_poll(now)
            return events
        if self._step == _POLL_HISTORY:
            self._step = _POLL_QUEUE
        elif self._step == _RECHECK:
            self._failure = PromptLost(
                f"prompt {self.prompt_id} is lost: it is neither queued, running nor in the history of {self.where}",
                hint="the server restarted, or the prompt was deleted from the queue")
        elif self._step == _CONFIRM:
            self._confirm_missed(now)
        return events

    def queue(self, queue: Mapping[str, Any], now: float) -> list[Event]:
        """The ``/queue`` answer."""
        events = self._server_answered()
        where = self.state.in_queue(queue)
        events += self.state.feed_queue(queue)
        if where is None:
            self._step = _RECHECK  # it may have just finished: history once more before calling it lost
        else:
            self._end_poll(now)
        return events

    def request_failed(self, error: LorawfError, now: float) -> list[Event]:
        """A poll request failed with a transport or protocol error."""
        events: list[Event] = []
        if self._trouble_since is None:
            self._trouble_since = now
            events.append(self._warning("server_trouble", f"{error}; retrying"))
        elif now - self._trouble_since > self.timing.grace:
            self._failure = error
            return events
        if self._step == _CONFIRM:
            self._confirm_missed(now)
        else:
            self._end_poll(now)  # a poll during trouble ends here; never "lost" while the server fails
        return events

    # -- internals ------------------------------------------------------------------------------------
    def _warning(self, code: str, message: str) -> WarningEvent:
        return WarningEvent(self.prompt_id, code, message)

    def _server_answered(self) -> list[Event]:
        if self._trouble_since is None:
            return []
        self._trouble_since = None
        return [self._warning("server_back", "the server answers again")]

    def _start_poll(self) -> None:
        if self._step in (_IDLE, _CONFIRM_PAUSE):
            self._step = _POLL_HISTORY

    def _end_poll(self, now: float) -> None:
        self._step = _IDLE
        self._last_poll = now
        if self._relevant_after_poll:
            self._last_relevant, self._relevant_after_poll = now, False

    def _confirm_missed(self, now: float) -> None:
        self._confirm_attempt += 1
        if self._confirm_attempt >= self.timing.confirm_attempts:
            self._step = _POLL_HISTORY
            return
        self._step = _CONFIRM_PAUSE
        self._pause_until = now + backoff(self._confirm_attempt - 1)
