"""Rendering a sweep: one line per active run and an overall line on a terminal, tagged log lines without
one, NDJSON with ``--json`` (every event with ``run`` and ``host``; the last line is the sweep's ``done``).

A :class:`SweepConsole` is the :class:`~lorawf.runs.sweep_events.SweepReporter` the sweep commands give the
engine. Every string that leaves it goes through the sweep's :class:`~lorawf.secrets.Secrets`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

from lorawf.cli.display import Clock, bar_line, describe, fit, terminal_columns
from lorawf.comfy.events import Download, Event, Notice, Output, Progress, Queued, Started, Upload
from lorawf.printable import json_line, printable
from lorawf.runs.sweep_events import HostChange, Placed, RunDone, SweepDone
from lorawf.secrets import NO_SECRETS, Secrets
from lorawf.timefmt import format_duration


@dataclass
class ActiveRun:
    """What the live block shows of one run."""

    host: str
    status: str = "preparing"
    step: int = 0
    total: int = 0
    first: tuple[float, int] | None = None
    rate: float | None = None

    def sample(self, now: float, step: int, total: int) -> None:
        self.step, self.total = step, total
        if self.first is None or step < self.first[1]:
            self.first = (now, step)
        elif now > self.first[0] and step > self.first[1]:
            self.rate = (step - self.first[1]) / (now - self.first[0])

    @property
    def eta(self) -> float | None:
        return (self.total - self.step) / self.rate if self.rate and self.total else None


class SweepProgress:
    """The sweep's numbers for the overall line: runs done, steps done over all runs, ETA from measured rates."""

    def __init__(self) -> None:
        self.active: dict[str, ActiveRun] = {}
        self.ended: dict[str, str] = {}
        self.total_runs = 0
        self.steps_done_ended = 0
        self.planned: dict[str, int] = {}

    def overall(self) -> tuple[int, int, int, int, float | None]:
        """(runs ended, runs, steps done, steps planned, ETA seconds)."""
        done_steps = self.steps_done_ended + sum(a.step for a in self.active.values())
        planned = sum(self.planned.values())
        rates = [a.rate for a in self.active.values() if a.rate]
        eta = (planned - done_steps) / sum(rates) if rates and planned else None
        return len(self.ended), self.total_runs, done_steps, planned, eta


class SweepConsole:
    """The sweep commands' reporter: live (a terminal), plain log lines, or NDJSON."""

    def __init__(self, stream: TextIO | None = None, *, json_mode: bool = False, live: bool | None = None,
                 secrets: Secrets = NO_SECRETS, verbose: bool = False, clock: Clock = time.monotonic,
                 columns: Callable[[], int] | None = None, min_interval: float = 0.2,
                 wall: Callable[[], datetime] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.json_mode = json_mode
        self.live = (not json_mode and self.stream.isatty()) if live is None else live
        self.secrets = secrets
        self.verbose = verbose
        self.clock = clock
        self.columns = columns or (lambda: terminal_columns(self.stream))
        self.min_interval = min_interval
        self.wall = wall or (lambda: datetime.now(timezone.utc))
        self.progress = SweepProgress()
        self.block_lines = 0
        self.last_draw = -1e9

    def expect(self, runs: dict[str, int]) -> None:
        """The runs of the sweep and their planned steps (for the overall line)."""
        self.progress.total_runs = len(runs)
        self.progress.planned = dict(runs)

    def __call__(self, event: Event, /, run: str | None = None, host: str | None = None) -> None:
        if self.json_mode:
            obj = event.to_dict()
            obj.setdefault("run", run)
            obj.setdefault("host", host)
            obj["time"] = self.wall().isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self.stream.write(json_line(self.secrets.scrub_obj(obj)) + "\n")
            self.stream.flush()
            return
        self._track(event, run, host)
        line = self._line(event, run, host)
        if line is not None:
            self._say(line)
        elif self.live:
            self._draw()

    # ------------------------------------------------------------------------------------ state

    def _track(self, event: Event, run: str | None, host: str | None) -> None:
        now = self.clock()
        if run is None:
            return
        active = self.progress.active
        if isinstance(event, Placed):
            active[run] = ActiveRun(event.host)
            self.progress.ended.pop(run, None)
        elif run in active:
            state = active[run]
            if isinstance(event, Queued):
                state.status = "queued" + (f" #{event.position}" if event.position else "")
            elif isinstance(event, Started):
                state.status = "running"
            elif isinstance(event, Progress) and event.overall_max:
                state.status = "training"
                state.sample(now, event.overall_value or 0, event.overall_max)
            elif isinstance(event, Download):
                state.status = "downloading"
        if isinstance(event, RunDone):
            ended = active.pop(run, None)
            if event.outcome == "success":
                self.progress.steps_done_ended += self.progress.planned.get(run, ended.total if ended else 0)
            self.progress.ended[run] = event.outcome

    def _line(self, event: Event, run: str | None, host: str | None) -> str | None:
        """The line a log (or the scroll above the live block) gets for ``event``; progress has none."""
        where = f"[{run}{' @ ' + host if host else ''}] " if run else (f"[{host}] " if host else "")
        if isinstance(event, Placed):
            again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            return f"{where}placed on {event.host}{again}"
        if isinstance(event, HostChange):
            return f"host {event.host} {event.state}: {event.message}"
        if isinstance(event, RunDone):
            mark = "✔" if event.outcome == "success" else "✘"
            return f"{where}{mark} {event.outcome}: {event.message}"
        if isinstance(event, SweepDone):
            self._clear()
            page = f"; comparison page: {event.page}" if event.page else ""
            return f"sweep {event.outcome}: {event.message}{page}"
        if isinstance(event, Notice):
            return f"{where}{'warning: ' if event.warning else ''}{event.message}"
        if isinstance(event, (Progress, Upload)) or event.kind in ("executing", "cached", "preview"):
            return None
        # many runs at once: a line per checkpoint, not per validation image or downloaded file (the run's
        # own end says how many files it brought home; --json still has every event)
        if isinstance(event, Download) or (isinstance(event, Output) and event.role != "checkpoint"):
            return None
        return (where + text) if (text := describe(event, self.verbose)) else None

    # ------------------------------------------------------------------------------------ output

    def _say(self, line: str) -> None:
        self._clear()
        self.stream.write(printable(self.secrets.scrub(line), multiline=True) + "\n")
        if self.live:
            self._draw(force=True)
        self.stream.flush()

    def _clear(self) -> None:
        if self.block_lines:
            self.stream.write(f"\x1b[{self.block_lines}F\x1b[J")
            self.block_lines = 0

    def block(self, width: int) -> list[str]:
        """The live block: one line per active run (host, step, ETA) and the overall line, each fitted."""
        lines = []
        for name, state in sorted(self.progress.active.items()):
            label = f"{name} @ {state.host}"
            if state.total:
                tail = f"{state.step}/{state.total}  ETA {format_duration(state.eta)}"
                lines.append(bar_line(fit(label, max(10, width // 2)), state.step, state.total, tail, width))
            else:
                lines.append(fit(f"{label}  {state.status}", width))
        ended, total, steps, planned, eta = self.progress.overall()
        overall = f"runs {ended}/{total} done"
        if planned:
            overall += f"  steps {steps}/{planned}  ETA {format_duration(eta)}"
        lines.append(bar_line("sweep", steps, planned, overall, width) if planned else fit(overall, width))
        return [printable(self.secrets.scrub(line)) for line in lines]

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_draw < self.min_interval:
            return
        self.last_draw = now
        lines = self.block(self.columns() - 1)  # one short: a full last column wraps on many terminals
        self._clear()
        for line in lines:
            self.stream.write(line + "\n")
        self.block_lines = len(lines)
        self.stream.flush()

    def close(self) -> None:
        self._clear()
        self.stream.flush()
