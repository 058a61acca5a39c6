"""Where the next run of a sweep goes: a pure policy over what each ComfyUI host is doing. No I/O, no clock.

Each host's own queue is the execution engine; the dispatcher only decides which host gets the next run
and when. The rule is *earliest estimated finish*: a run goes to the host that would finish it first,
counting the training steps our runs still have on that host, other users' prompts in its queue and the
host's measured speed. When that host has no free slot the run waits for it rather than going to a slower
host now (at the end of a sweep a slow host that takes the last run would make everyone wait for it),
unless the slower host would still finish it before all the work left could be done anyway.

``slots`` (default 2: one running and one queued) keeps the next prompt on the host's queue before the
current one ends, so the GPU never waits for lorawf to notice the end and submit.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lorawf.errors import PromptLost, ServerUnreachable

#: Assumed speed of a host that has not trained anything yet, when no host has (steps per second); only the
#: ratio between hosts matters, so any positive number gives "all hosts equal".
UNMEASURED_RATE = 1.0
#: How often a run is moved to another host after its host failed, before it is reported as an error.
MAX_MOVES = 3


@dataclass(frozen=True)
class HostView:
    """What the dispatcher knows about one host at one moment."""

    name: str
    up: bool
    slots: int
    ours: int  # our runs placed on it and not yet off its queue (preparing, queued or running)
    backlog_steps: float  # training steps those runs still have to do
    foreign: int = 0  # other users' prompts on its queue (never touched, but they go first)
    rate: float | None = None  # measured training steps per second; None before its first run trained

    @property
    def free(self) -> int:
        return max(0, self.slots - self.ours)


def assumed_rate(host: HostView, hosts: Sequence[HostView]) -> float:
    """The host's measured rate, else the median of the measured ones, else :data:`UNMEASURED_RATE`."""
    if host.rate:
        return host.rate
    known = [h.rate for h in hosts if h.rate]
    return statistics.median(known) if known else UNMEASURED_RATE


def estimated_finish(host: HostView, steps: int, hosts: Sequence[HostView], foreign_seconds: float) -> float:
    """Seconds from now until ``host`` would finish a run of ``steps`` placed on it now."""
    rate = assumed_rate(host, hosts)
    return (host.backlog_steps + steps) / rate + host.foreign * foreign_seconds


def choose_host(steps: int, hosts: Sequence[HostView], *, foreign_seconds: float = 0.0,
                pending_steps: float = 0.0) -> str | None:
    """The host to place a run of ``steps`` on now, or ``None`` to wait (no host up, or the best one is full).

    ``hosts`` are the hosts able to run it; ``foreign_seconds`` is the expected length of another user's
    prompt; ``pending_steps`` the steps of every run still waiting for a host (this one included). When the
    best host is full, a free one still takes the run if it would finish it within the *horizon*: the time
    all hosts together need for all the work left. Then the run does not make the sweep longer, and that
    host's GPU does not sit idle while work waits. Ties go to more free slots, then to the name.
    """
    candidates = [h for h in hosts if h.up and h.slots > 0]
    if not candidates:
        return None

    def finish(h: HostView) -> float:
        return round(estimated_finish(h, steps, candidates, foreign_seconds), 6)

    best = min(candidates, key=lambda h: (finish(h), -h.free, h.name))
    if best.free > 0:
        return best.name
    rates = sum(assumed_rate(h, candidates) for h in candidates)
    horizon = (sum(h.backlog_steps for h in candidates) + max(pending_steps, steps)) / rates
    free = [h for h in candidates if h.free > 0 and finish(h) <= horizon]
    return min(free, key=lambda h: (finish(h), -h.free, h.name)).name if free else None


def dispatch_order(steps: Sequence[int]) -> list[int]:
    """Indexes of runs in the order they are placed: longest first (a short run last evens out the end),
    file order among equals."""
    return sorted(range(len(steps)), key=lambda i: (-steps[i], i))


def is_host_fault(error: BaseException) -> bool:
    """Did the run end because of its host (gone, or it lost the prompt) rather than for its own reasons?

    Only these move a run to another host; a rejected workflow or a node error would fail anywhere."""
    return isinstance(error, (ServerUnreachable, PromptLost))
