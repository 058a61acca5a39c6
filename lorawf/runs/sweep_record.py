"""``SWEEP_DIR/sweep.json`` (schema ``lorawf.sweep/1``): the record of every run of a sweep, kept current.

Written first, before any run is placed, and rewritten atomically on every change of a run's state, host or
prompt id, so a closed laptop or a crash leaves a file ``lorawf sweep resume`` can carry on from. It holds
the expanded runs and the servers (environment variable *names* only, never their values), so resuming
needs neither the sweep file nor its datasets' folders to have stayed the same. Each run's own details are
in its ordinary run folder (``SWEEP_DIR/<run name>/run.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from lorawf.errors import RecordError
from lorawf.runs.record import read_json_record, write_json_record
from lorawf.timefmt import iso_utc, parse_iso

SCHEMA = "lorawf.sweep/1"
SWEEP_RECORD = "sweep.json"
PAGE_NAME = "index.html"
#: Where an attempt's folder goes when its run starts again from the start elsewhere (nothing is deleted).
ATTEMPTS_DIR = "attempts"

#: A run's states, in the order a run passes through them; the last five are final. ``finishing``: its prompt
#: has left the host's queue and its outputs are coming home (it no longer holds a slot).
STATES = ("pending", "preparing", "queued", "running", "finishing", "success", "failed", "error", "cancelled",
          "skipped")
FINAL = frozenset({"success", "failed", "error", "cancelled", "skipped"})
#: A run in one of these holds a slot on its host.
PLACED = frozenset({"preparing", "queued", "running"})


@dataclass(frozen=True)
class Attempt:
    """One try of a run on one host; a run moved after a host fault has several."""

    host: str
    prompt_id: str | None
    outcome: str
    error: str | None = None
    folder: str | None = None  # where this attempt's files are, relative to the sweep folder
    from_step: int = 0  # 0: from the start; else continued from this checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "prompt_id": self.prompt_id, "outcome": self.outcome, "error": self.error,
                "folder": self.folder, "from_step": self.from_step}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        return cls(str(data["host"]), data.get("prompt_id"), str(data["outcome"]), data.get("error"),
                   data.get("folder"), int(data.get("from_step") or 0))


@dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: what it is (``spec``, as :meth:`RunSpec.to_dict`) and where it stands."""

    name: str
    spec: dict[str, Any]
    steps: int
    state: str = "pending"
    host: str | None = None
    prompt_id: str | None = None
    step: int = 0  # training steps done, as last seen
    error: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    attempts: tuple[Attempt, ...] = ()
    from_step: int = 0  # > 0: the next attempt continues from this local checkpoint

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "host": self.host, "prompt_id": self.prompt_id,
            "steps": self.steps, "step": self.step, "error": self.error,
            "started": iso_utc(self.started) if self.started else None,
            "finished": iso_utc(self.finished) if self.finished else None,
            "folder": self.name, "from_step": self.from_step, "attempts": [a.to_dict() for a in self.attempts],
            "spec": self.spec,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepRun:
        state = str(data.get("state", "pending"))
        if state not in STATES:
            raise ValueError(f"state {state!r}")
        return cls(
            str(data["name"]), dict(data["spec"]), int(data["steps"]), state, data.get("host"),
            data.get("prompt_id"), int(data.get("step") or 0), data.get("error"),
            parse_iso(data["started"]) if data.get("started") else None,
            parse_iso(data["finished"]) if data.get("finished") else None,
            tuple(Attempt.from_dict(a) for a in data.get("attempts") or ()), int(data.get("from_step") or 0),
        )


@dataclass(frozen=True)
class SweepRecord:
    """The whole ``sweep.json``."""

    name: str
    source: str  # the sweep file it was made from
    created: datetime
    servers: tuple[dict[str, Any], ...]  # ServerSpec.to_dict(), plus "state" and "reason" once known
    runs: tuple[SweepRun, ...]
    template: str | None = None
    outcome: str = "running"
    updated: datetime | None = None
    schema: str = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str) -> SweepRun:
        return next(r for r in self.runs if r.name == name)

    def with_run(self, run: SweepRun) -> SweepRecord:
        return replace(self, runs=tuple(run if r.name == run.name else r for r in self.runs))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs:
            out[run.state] = out.get(run.state, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "name": self.name, "outcome": self.outcome, "source": self.source,
            "created": iso_utc(self.created), "updated": iso_utc(self.updated) if self.updated else None,
            "template": self.template, "counts": self.counts(), "servers": list(self.servers),
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Any) -> SweepRecord:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} record")
        return cls(
            str(data["name"]), str(data.get("source") or ""), parse_iso(data["created"]),
            tuple(dict(s) for s in data["servers"]), tuple(SweepRun.from_dict(r) for r in data["runs"]),
            data.get("template"), str(data.get("outcome") or "running"),
            parse_iso(data["updated"]) if data.get("updated") else None,
        )


def write_sweep(sweep_dir: Path, record: SweepRecord, secrets: tuple[str, ...] = ()) -> Path:
    """Write ``sweep.json`` atomically; refuses (writes nothing) if any secret would reach it."""
    return write_json_record(Path(sweep_dir) / SWEEP_RECORD, record.to_dict(), secrets)


def read_sweep(sweep_dir: Path) -> SweepRecord:
    """Read ``SWEEP_DIR/sweep.json``; every problem is one :class:`RecordError` line naming the file."""
    path = Path(sweep_dir)
    if path.is_dir():
        path = path / SWEEP_RECORD
    data = read_json_record(path, f"no sweep record here (expected {SWEEP_RECORD} written by `lorawf sweep`)")
    try:
        return SweepRecord.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{path}: not a {SCHEMA} record ({type(exc).__name__}: {exc})") from None
