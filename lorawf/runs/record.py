"""Run records: ``DIR/run.json``, the local account of one training run (schema ``lorawf.run/1``).

A record holds what was planned (the plan and the JSON Patch applied to the template), where it ran (the
server URL without credentials, its ComfyUI version, the ``prompt_id``), how it went (client-side timings,
the outcome, the error) and what came back (every downloaded file with its size and sha256).

Pure parts (the dataclasses, ``to_dict``/``from_dict``, :func:`classify_file`) do no I/O; the edges are
:func:`write_record`, :func:`read_record`, :func:`file_entry`, :func:`scan_files` and :func:`list_runs`.
Secrets never reach disk: :func:`write_record` refuses a record whose text contains any secret it is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from lorawf.errors import InputError, RecordError, SecretInRecord
from lorawf.fsutil import atomic_write_text, sha256_file
from lorawf.secrets import Secrets
from lorawf.timefmt import iso_utc, parse_iso

SCHEMA = "lorawf.run/1"
RECORD_NAME = "run.json"
SHEET_NAME = "contact_sheet.png"

OUTCOMES = ("success", "error", "interrupted", "cancelled", "lost", "pending")
KINDS = ("checkpoint", "final_lora", "validation_image", "other")
#: Files :func:`scan_files` leaves out: partial downloads and temp files.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".download")

#: A step checkpoint's name: ``<name>-stepNNNNN.safetensors`` (the step is group 1).
CHECKPOINT_RE = re.compile(r"-step(\d{5,})\.safetensors$")
VALIDATION_IMAGE_RE = re.compile(r"^val_step(\d+)_(\d+)_\.png$")

# Event outcomes (lorawf.comfy.events Done.outcome) -> record outcomes.
_EVENT_OUTCOMES = {
    "success": "success",
    "failed": "error",
    "interrupted": "interrupted",
    "cancelled": "cancelled",
    "lost": "lost",
    "submitted": "pending",
}


# ------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class FileEntry:
    """One downloaded file: ``path`` is relative to the run folder, ``/``-separated."""

    path: str
    size: int
    sha256: str
    kind: str = "other"
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "kind": self.kind, "step": self.step}


@dataclass(frozen=True)
class Timings:
    """Client-side times of the run (UTC). ``None``: that moment has not happened (yet)."""

    created: datetime
    submitted: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None

    def durations(self) -> dict[str, float | None]:
        """Seconds queued (submitted→started), running (started→finished) and in total (created→finished)."""

        def span(a: datetime | None, b: datetime | None) -> float | None:
            return round((b - a).total_seconds(), 3) if a is not None and b is not None else None

        return {
            "queued_seconds": span(self.submitted, self.started),
            "running_seconds": span(self.started, self.finished),
            "total_seconds": span(self.created, self.finished),
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: iso_utc(value) if value is not None else None
            for name, value in (
                ("created", self.created),
                ("submitted", self.submitted),
                ("started", self.started),
                ("finished", self.finished),
            )
        }
        out.update(self.durations())
        return out


@dataclass(frozen=True)
class Segment:
    """One prompt of a run that was continued: which steps it trained, how, where, and how it ended.

    ``mode`` is ``initial`` (the first prompt), ``exact`` (continued from a saved training state) or
    ``weights`` (continued from a checkpoint's weights: approximate). Steps are the run's global steps.
    """

    prompt_id: str | None
    mode: str
    from_step: int
    to_step: int
    output_dir: str
    outcome: str = "pending"
    started: datetime | None = None
    finished: datetime | None = None
    note: str | None = None  # what the mode means for the result (weights only: approximate)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "mode": self.mode, "note": self.note, "from_step": self.from_step,
                "to_step": self.to_step, "output_dir": self.output_dir, "outcome": self.outcome,
                "started": iso_utc(self.started) if self.started else None,
                "finished": iso_utc(self.finished) if self.finished else None}


SEGMENT_MODES = ("initial", "exact", "weights")


@dataclass(frozen=True)
class RunRecord:
    """Everything lorawf knows about one run; serialises to ``run.json``. Build new states with
    :func:`dataclasses.replace` (e.g. ``replace(rec, outcome="success", files=tuple(entries))``)."""

    name: str
    plan: dict[str, Any]
    patch: list[dict[str, Any]]
    template: str
    server_url: str
    timings: Timings
    server_version: str | None = None
    prompt_id: str | None = None
    outcome: str = "pending"
    error: str | None = None
    prompts: tuple[str, ...] = ()
    files: tuple[FileEntry, ...] = ()
    segments: tuple[Segment, ...] = ()  # only once the run was continued; the first is the initial prompt
    schema: str = SCHEMA

    @property
    def checkpoints(self) -> tuple[FileEntry, ...]:
        """Downloaded step checkpoints, by step."""
        return tuple(sorted((f for f in self.files if f.kind == "checkpoint"), key=lambda f: (f.step or 0, f.path)))

    @property
    def final_lora(self) -> FileEntry | None:
        """The downloaded final LoRA, if any."""
        return next((f for f in self.files if f.kind == "final_lora"), None)

    @property
    def total_size(self) -> int:
        """Bytes of every downloaded file."""
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The ``run.json`` object (key order fixed)."""
        return {
            "schema": self.schema,
            "name": self.name,
            "outcome": self.outcome,
            "error": self.error,
            "prompt_id": self.prompt_id,
            "server": {"url": self.server_url, "comfyui_version": self.server_version},
            "timings": self.timings.to_dict(),
            "template": self.template,
            "plan": self.plan,
            "prompts": list(self.prompts),
            "patch": self.patch,
            "files": [f.to_dict() for f in self.files],
            **({"segments": [seg.to_dict() for seg in self.segments]} if self.segments else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = RECORD_NAME) -> RunRecord:
        """Parse a ``run.json`` object; any problem is a one-line :class:`RecordError` naming ``source``."""
        return _parse_record(data, source)


def outcome_from_event(outcome: str) -> str:
    """Map a ``done`` event outcome (``lorawf.comfy.events``) to a record outcome: unknown failures are ``error``."""
    return _EVENT_OUTCOMES.get(outcome, "error")


# ------------------------------------------------------------------------------------------- parsing


def _need(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], source: str, *,
          optional: bool = False) -> Any:
    if key not in data or (optional and data[key] is None):
        if optional:
            return None
        raise RecordError(f"{source}: missing field {key!r}; is this a lorawf run record?")
    value = data[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        wanted = " or ".join(t.__name__ for t in _as_tuple(types))
        raise RecordError(f"{source}: field {key!r} should be {wanted}, not {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _time(data: Mapping[str, Any], key: str, source: str, *, optional: bool = True) -> datetime | None:
    text = _need(data, key, str, source, optional=optional)
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise RecordError(f"{source}: timings.{key} {text[:40]!r} is not an ISO-8601 time") from None


def _parse_file(raw: Any, source: str, index: int) -> FileEntry:
    where = f"{source} files[{index}]"
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected an object")
    path = _need(raw, "path", str, where)
    size = _need(raw, "size", int, where)
    digest = _need(raw, "sha256", str, where)
    kind = _need(raw, "kind", str, where, optional=True) or "other"
    step = _need(raw, "step", int, where, optional=True)
    if kind not in KINDS:
        raise RecordError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise RecordError(f"{where}: sha256 {digest[:70]!r} is not 64 lowercase hex digits")
    return FileEntry(path, size, digest, kind, step)


def _parse_record(data: Any, source: str) -> RunRecord:
    if not isinstance(data, dict):
        raise RecordError(f"{source}: expected a JSON object, found {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith("lorawf.run/"):
            raise RecordError(f"{source}: schema {schema!r} is not {SCHEMA!r}; upgrade lorawf to read it")
        raise RecordError(f"{source}: not a lorawf run record (schema is {schema!r}, expected {SCHEMA!r})")
    server = _need(data, "server", dict, source)
    timings = _need(data, "timings", dict, source)
    created = _time(timings, "created", f"{source} timings", optional=False)
    if created is None:  # pragma: no cover - _need raises first
        raise RecordError(f"{source}: missing field 'timings.created'")
    outcome = _need(data, "outcome", str, source)
    if outcome not in OUTCOMES:
        raise RecordError(f"{source}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    prompts = _need(data, "prompts", list, source, optional=True) or []
    if not all(isinstance(p, str) for p in prompts):
        raise RecordError(f"{source}: field 'prompts' should be a list of strings")
    files = _need(data, "files", list, source, optional=True) or []
    return RunRecord(
        name=_need(data, "name", str, source),
        plan=_need(data, "plan", dict, source),
        patch=_need(data, "patch", list, source),
        template=_need(data, "template", str, source),
        server_url=_need(server, "url", str, f"{source} server"),
        server_version=_need(server, "comfyui_version", str, f"{source} server", optional=True),
        prompt_id=_need(data, "prompt_id", str, source, optional=True),
        timings=Timings(
            created,
            _time(timings, "submitted", f"{source} timings"),
            _time(timings, "started", f"{source} timings"),
            _time(timings, "finished", f"{source} timings"),
        ),
        outcome=outcome,
        error=_need(data, "error", str, source, optional=True),
        prompts=tuple(prompts),
        files=tuple(_parse_file(raw, source, i) for i, raw in enumerate(files)),
        segments=tuple(_parse_segment(raw, source, i)
                       for i, raw in enumerate(_need(data, "segments", list, source, optional=True) or [])),
        schema=schema,
    )


def _parse_segment(raw: Any, source: str, index: int) -> Segment:
    where = f"{source} segments[{index}]"
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected an object")
    mode = _need(raw, "mode", str, where)
    outcome = _need(raw, "outcome", str, where)
    if mode not in SEGMENT_MODES:
        raise RecordError(f"{where}: mode {mode!r} is not one of {', '.join(SEGMENT_MODES)}")
    if outcome not in OUTCOMES:
        raise RecordError(f"{where}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    return Segment(_need(raw, "prompt_id", str, where, optional=True), mode, _need(raw, "from_step", int, where),
                   _need(raw, "to_step", int, where), _need(raw, "output_dir", str, where), outcome,
                   _time(raw, "started", where), _time(raw, "finished", where),
                   _need(raw, "note", str, where, optional=True))


# ------------------------------------------------------------------------------------------- writing


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def dumps_record(record: RunRecord) -> str:
    """Deterministic ``run.json`` text: 2-space indent, UTF-8 kept, trailing newline (no secret check)."""
    return _dumps(record.to_dict())


def _find_secret(value: Any, secret: str, where: str) -> str | None:
    """The JSON path of the first string (key or value) that contains ``secret``."""
    if isinstance(value, str):
        return where if secret in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if secret in str(key):
                return f"{where}.{key}"
            found = _find_secret(item, secret, f"{where}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_secret(item, secret, f"{where}[{index}]")
            if found:
                return found
    return None


def check_no_secrets(text: str, secrets: Iterable[str], *, data: Any = None, source: str = RECORD_NAME) -> None:
    """Raise :class:`SecretInRecord` if ``text`` contains any secret (raw or JSON-escaped), by the one
    rule of :class:`lorawf.secrets.Secrets`. The message names the field, never the secret."""
    secret = Secrets.of(secrets).find(text)
    if secret is not None:
        field_path = _find_secret(data, secret, "$") if data is not None else None
        at = f" (in {field_path})" if field_path else ""
        raise SecretInRecord(
            f"refusing to write {source}: it would contain a server token or header value{at}; "
            "nothing was written",
            hint="report this as a lorawf bug",
        )


def _check_url(url: str, source: str) -> None:
    parts = urlsplit(url)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise SecretInRecord(
            f"refusing to write {source}: server.url has credentials or a query string; nothing was written",
            hint="pass ServerSettings.redacted_url",
        )


def write_record(run_dir: Path, record: RunRecord, secrets: Sequence[str] = ()) -> Path:
    """Write ``run_dir/run.json`` atomically and return its path.

    Refuses (raises :class:`SecretInRecord`, writes nothing) when the text would contain any of ``secrets``
    (pass ``ServerSettings.secret_values()``) or when ``server_url`` still carries credentials.
    """
    path = Path(run_dir) / RECORD_NAME
    if record.outcome not in OUTCOMES:
        raise ValueError(f"run record outcome {record.outcome!r} is not one of {', '.join(OUTCOMES)}")
    _check_url(record.server_url, str(path))
    return write_json_record(path, record.to_dict(), secrets)


def write_json_record(path: Path, data: Mapping[str, Any], secrets: Sequence[str] = ()) -> Path:
    """Write a record file atomically (2-space JSON, UTF-8 kept); nothing is written if it would hold a secret."""
    text = _dumps(data)
    check_no_secrets(text, secrets, data=data, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def read_record(path: Path) -> RunRecord:
    """Read a ``run.json`` (or a run folder holding one); problems are one-line :class:`RecordError`\\ s."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    data = read_json_record(path, f"no run record here (expected {RECORD_NAME} written by `lorawf run`)")
    return _parse_record(data, str(path))


def read_json_record(path: Path, missing: str) -> Any:
    """The JSON value of a record file (``run.json``, ``sweep.json``); one :class:`RecordError` line otherwise."""
    from lorawf.fsutil import read_text

    text = read_text(path, missing=missing, error=RecordError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None


# ------------------------------------------------------------------------------------------- files


def classify_file(name: str) -> tuple[str, int | None]:
    """``(kind, step)`` from a file name: FluxTrainer's ``<name>-stepNNNNN.safetensors`` is a checkpoint,
    any other ``.safetensors`` the final LoRA, ``val_stepNNNNN_CCCCC_.png`` a validation image."""
    base = PurePosixPath(name.replace("\\", "/")).name
    match = CHECKPOINT_RE.search(base)
    if match:
        return "checkpoint", int(match.group(1))
    if base.endswith(".safetensors"):
        return "final_lora", None
    match = VALIDATION_IMAGE_RE.match(base)
    if match:
        return "validation_image", int(match.group(1))
    return "other", None



def file_entry(path: Path, root: Path, kind: str | None = None, step: int | None = None) -> FileEntry:
    """Hash ``path`` (which must lie inside ``root``) into a :class:`FileEntry` with a ``/`` relative path.

    ``kind``/``step`` default to :func:`classify_file` of the name.
    """
    path, root = Path(path), Path(root)
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        raise InputError(f"{path}: not inside the run folder {root}") from None
    if kind is None:
        kind, guessed = classify_file(path.name)
        step = guessed if step is None else step
    if kind not in KINDS:
        raise ValueError(f"file kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        size, digest = sha256_file(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return FileEntry(rel.as_posix(), size, digest, kind, step)


def scan_files(run_dir: Path, *, exclude: Iterable[str] = (RECORD_NAME,)) -> list[FileEntry]:
    """Hash every file under ``run_dir`` (sorted by path), classified by name.

    Leaves out ``exclude`` (relative paths; ``run.json`` by default), hidden files and partial downloads
    (:data:`PARTIAL_SUFFIXES`), and symlinks.
    """
    root = Path(run_dir)
    skipped = set(exclude)
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (
            path.is_symlink()
            or not path.is_file()
            or rel.as_posix() in skipped
            or any(part.startswith(".") for part in rel.parts)
            or path.name.endswith(PARTIAL_SUFFIXES)
        ):
            continue
        entries.append(file_entry(path, root))
    return entries


# ------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class RunSummary:
    """One line of ``lorawf runs``; ``error`` is set (and the rest mostly empty) for an unreadable record."""

    path: Path
    name: str
    started: datetime | None = None
    outcome: str | None = None
    steps: int | None = None
    checkpoints_planned: int | None = None
    checkpoints: int = 0
    final_lora: bool = False
    size: int = 0
    prompt_id: str | None = None
    error: str | None = None
    record: RunRecord | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "started": iso_utc(self.started) if self.started else None,
            "outcome": self.outcome,
            "steps": self.steps,
            "checkpoints_planned": self.checkpoints_planned,
            "checkpoints": self.checkpoints,
            "final_lora": self.final_lora,
            "size": self.size,
            "prompt_id": self.prompt_id,
            "error": self.error,
        }


def summarize(record: RunRecord, path: Path) -> RunSummary:
    """The :class:`RunSummary` of a record read from ``path``."""
    t = record.timings
    steps = record.plan.get("max_train_steps")
    planned = record.plan.get("checkpoint_steps")
    return RunSummary(
        path=path,
        name=record.name,
        started=t.started or t.submitted or t.created,
        outcome=record.outcome,
        steps=steps if isinstance(steps, int) else None,
        checkpoints_planned=len(planned) if isinstance(planned, list) else None,
        checkpoints=len(record.checkpoints),
        final_lora=record.final_lora is not None,
        size=record.total_size,
        prompt_id=record.prompt_id,
        record=record,
    )


def list_runs(directory: Path) -> list[RunSummary]:
    """Every run under ``directory`` (``DIR/run.json`` and ``DIR/*/run.json``), oldest start first.

    An unreadable record does not stop the listing: it comes back (last) as a summary with ``error`` set.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (give the --download folder of your runs)")
    paths = [root / RECORD_NAME] if (root / RECORD_NAME).is_file() else []
    paths += sorted(p for p in root.glob(f"*/{RECORD_NAME}") if p.is_file())
    good: list[RunSummary] = []
    bad: list[RunSummary] = []
    for path in paths:
        try:
            good.append(summarize(read_record(path), path))
        except RecordError as err:
            bad.append(RunSummary(path=path, name=path.parent.name, error=str(err)))
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    good.sort(key=lambda s: (s.started or epoch, s.name, str(s.path)))
    return good + bad
