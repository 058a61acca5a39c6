"""Where the next run of a sweep goes: a pure policy over what each ComfyUI host is doing. No I/O, no clock.

Each host's own queue is the execution engine; the dispatcher only decides which host gets the next run
and when. The rule is *the shortest estimated makespan for the work left*: at every change the dispatcher plans
where each waiting run would go (:func:`plan_placements`: the steps our runs still have on each host, other
users' prompts in its queue, each host's measured speed) and starts the runs whose planned host has a free
slot. A run waits for its planned host rather than going to a slower one now: at the end of a sweep a slow
host that takes the last run would make everyone wait for it. :func:`choose_host` is the one-run-at-a-time
form of the same estimate (earliest finish), kept as the baseline the plan is measured against.

``slots`` (default 2: one running and one queued) keeps the next prompt on the host's queue before the
current one ends, so the GPU never waits for lorawf to notice the end and submit.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
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


#: How many partial assignments :func:`plan_placements` may look at before it settles for the best so far.
SEARCH_BUDGET = 20_000


def plan_placements(runs: Sequence[tuple[int, Sequence[str]]], hosts: Sequence[HostView], *,
                    foreign_seconds: float = 0.0, budget: int = SEARCH_BUDGET) -> list[str | None]:
    """The host each waiting run should go to, planned together: the assignment with the shortest estimated
    makespan (ties: the smallest sum of the hosts' finish times, so no host is left idle for nothing), found
    by branch and bound from the earliest-finish greedy plan. ``runs`` are ``(steps, hosts able to run it)``;
    hosts that are down are not planned for. ``None``: no host can take that run now.

    The dispatcher places a run only when its planned host has a free slot, and plans again at every change:
    with the measured speeds this is the ideal schedule for the work left, not a one-run-at-a-time guess."""
    up = {h.name: h for h in hosts if h.up and h.slots > 0}
    rate = {name: assumed_rate(h, list(up.values())) for name, h in up.items()}
    start = {name: h.backlog_steps / rate[name] + h.foreign * foreign_seconds for name, h in up.items()}
    order = dispatch_order([steps for steps, _able in runs])
    able = [[name for name in sorted(runs[i][1]) if name in up] for i in range(len(runs))]

    def score(load: Mapping[str, float]) -> tuple[float, float]:
        return round(max(load.values(), default=0.0), 6), round(sum(load.values()), 6)

    # the greedy plan: each run (longest first) where it would finish first
    load = dict(start)
    greedy: list[str | None] = [None] * len(runs)
    for i in order:
        if able[i]:
            host = min(able[i], key=lambda h: (round(load[h] + runs[i][0] / rate[h], 6), h))
            greedy[i] = host
            load[host] += runs[i][0] / rate[host]
    best, best_score = list(greedy), score(load)
    placed: list[str | None] = [None] * len(runs)
    explored = 0

    def search(depth: int, load: dict[str, float]) -> None:
        nonlocal best, best_score, explored
        explored += 1
        if explored > budget or max(load.values(), default=0.0) > best_score[0] + 1e-9:
            return
        if depth == len(order):
            current = score(load)
            if current < best_score:
                best, best_score = list(placed), current
            return
        i = order[depth]
        if not able[i]:
            search(depth + 1, load)
            return
        for host in sorted(able[i], key=lambda h: load[h] + runs[i][0] / rate[h]):
            placed[i] = host
            load[host] += runs[i][0] / rate[host]
            search(depth + 1, load)
            load[host] -= runs[i][0] / rate[host]
        placed[i] = None

    search(0, dict(start))
    return best
