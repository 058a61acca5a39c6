"""The events of a sweep, beside each run's own events (``lorawf.event/1``, every one carrying ``run`` and
``host`` in ``--json``). A sweep's stream ends with one ``done`` for the whole sweep; each run's own end is a
``run_done`` (its ``done``, renamed, so that a reader waiting for ``done`` waits for the sweep)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from lorawf.comfy.events import Done, Event, OutputFile


class SweepReporter(Protocol):
    """Receives every event of a sweep with the run and host it belongs to (``None`` for sweep-wide ones)."""

    def __call__(self, event: Event, /, run: str | None = None, host: str | None = None) -> None: ...


@dataclass(frozen=True)
class Placed(Event):
    """A run was given to a host (``attempt`` 1 the first time, more after a host fault moved it)."""

    kind: ClassVar[str] = "placed"
    run: str = ""
    host: str = ""
    attempt: int = 1
    from_step: int = 0


@dataclass(frozen=True)
class HostChange(Event):
    """A host is up (answering, able to run the sweep's workflow), down (not answering) or incapable."""

    kind: ClassVar[str] = "host"
    host: str = ""
    state: str = ""
    message: str = ""


@dataclass(frozen=True)
class RunDone(Event):
    """One run of the sweep ended (its own ``done``): outcome, exit code, one line, its outputs."""

    kind: ClassVar[str] = "run_done"
    run: str = ""
    host: str = ""
    outcome: str = ""
    exit_code: int = 0
    message: str = ""
    outputs: tuple[OutputFile, ...] = ()

    @classmethod
    def of(cls, done: Done, run: str, host: str) -> RunDone:
        return cls(done.prompt_id, run, host, done.outcome, done.exit_code, done.message, done.outputs)


@dataclass(frozen=True)
class SweepDone(Event):
    """The last event of a sweep: its outcome and exit code, a line, and how many runs ended how."""

    kind: ClassVar[str] = "done"
    outcome: str = ""
    exit_code: int = 0
    message: str = ""
    runs: dict[str, int] | None = None
    page: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["runs"] = dict(self.runs or {})
        return out
