"""Typed run events and a pure fold of ComfyUI server messages into the state of one run.

Nothing here does I/O. :class:`RunState` is fed the decoded JSON websocket messages (``{"type", "data"}``),
parsed binary frame headers, ``/queue`` snapshots and ``/history`` entries for one ``prompt_id``; each
``feed_*`` call returns the :class:`Event` objects that the change produced. The async client only moves
bytes into it, and the display only renders what comes out, so the whole protocol logic is testable by
feeding recorded transcripts.

Every event serialises to one JSON object with the stable schema ``lorawf.event/1`` (see docs/reference/events.md).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from lorawf.comfy.graph import is_link
from lorawf.comfy.values import FieldValue

SCHEMA = "lorawf.event/1"

#: Node classes whose ``steps`` count toward the overall training progress (progress restarts at each).
DEFAULT_LOOP_CLASSES: frozenset[str] = frozenset({"FluxTrainLoop", "FluxTrainAndValidateLoop"})
#: Node classes that write a LoRA checkpoint when they run.
CHECKPOINT_CLASSES: frozenset[str] = frozenset({"FluxTrainSave", "FluxTrainEnd", "FluxTrainSaveModel"})
#: Node classes that produce validation images.
VALIDATION_CLASSES: frozenset[str] = frozenset({"FluxTrainValidate", "SDXLTrainValidate"})
LOSS_PLOT_CLASSES: frozenset[str] = frozenset({"VisualizeLoss"})

# Outcomes reported by the final ``done`` event.
SUCCESS = "success"
FAILED = "failed"
INTERRUPTED = "interrupted"
OUTCOMES = (
    SUCCESS, FAILED, INTERRUPTED, "cancelled", "rejected", "lost", "unreachable", "protocol_error",
    "timeout", "submitted",
)


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, eq=False, repr=False)
class Event(FieldValue):
    """Base class of every event. ``to_dict`` gives the ``lorawf.event/1`` JSON object."""

    kind: ClassVar[str] = "event"
    prompt_id: str | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA, "event": self.kind}
        for item in fields(self):
            out[item.name] = _jsonable(getattr(self, item.name))
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


@dataclass(frozen=True, eq=False, repr=False)
class Queued(Event):
    """The prompt is in the queue; ``position`` is its 1-based rank among pending prompts (None: unknown)."""

    kind: ClassVar[str] = "queued"
    number: float | int | None = None
    position: int | None = None


@dataclass(frozen=True, eq=False, repr=False)
class Started(Event):
    """The server began executing the prompt."""

    kind: ClassVar[str] = "started"


@dataclass(frozen=True, eq=False, repr=False)
class NodeRef(FieldValue):
    """A node of the workflow, with its title (``_meta.title``, else the class type)."""

    node: str
    title: str
    class_type: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "title": self.title, "class_type": self.class_type}


@dataclass(frozen=True, eq=False, repr=False)
class Cached(Event):
    """Nodes whose results the server reused from its cache (they will not run)."""

    kind: ClassVar[str] = "cached"
    nodes: tuple[NodeRef, ...] = ()


@dataclass(frozen=True, eq=False, repr=False)
class Executing(Event):
    """A node started executing. ``loop``/``loops`` number the training loops (1-based) when it is one."""

    kind: ClassVar[str] = "executing"
    node: str = ""
    title: str = ""
    class_type: str | None = None
    loop: int | None = None
    loops: int = 0
    overall_value: int | None = None  # steps trained so far over all loops (None without loops)
    overall_max: int | None = None


@dataclass(frozen=True, eq=False, repr=False)
class Progress(Event):
    """A step of a node with a progress bar; ``overall_*`` sum all training loops (None without loops)."""

    kind: ClassVar[str] = "progress"
    node: str = ""
    title: str = ""
    value: int = 0
    max: int = 0
    overall_value: int | None = None
    overall_max: int | None = None


@dataclass(frozen=True, eq=False, repr=False)
class Output(Event):
    """One output of a node: a file (``filename`` set) or a text value (``text`` set).

    ``role`` is ``checkpoint``, ``validation``, ``loss_plot``, ``image``, ``file`` or ``text``.
    """

    kind: ClassVar[str] = "output"
    node: str = ""
    title: str = ""
    key: str = ""
    role: str = "file"
    filename: str | None = None
    subfolder: str | None = None
    type: str | None = None
    text: str | None = None


@dataclass(frozen=True, eq=False, repr=False)
class WarningEvent(Event):
    """Something the user should know that does not end the run (node_errors on 200, reconnects...)."""

    kind: ClassVar[str] = "warning"
    code: str = ""
    message: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class ErrorEvent(Event):
    """The run failed on the server (``execution_error``) or was rejected; ``message`` is one line."""

    kind: ClassVar[str] = "error"
    code: str = ""
    message: str = ""
    node: str | None = None
    title: str | None = None
    node_type: str | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    traceback: tuple[str, ...] | None = None
    node_errors: tuple[Any, ...] = ()


@dataclass(frozen=True, eq=False, repr=False)
class Preview(Event):
    """A binary preview frame for our prompt; ``path`` is set when it was saved (``--previews``)."""

    kind: ClassVar[str] = "preview"
    node: str | None = None
    image_type: str | None = None
    bytes: int = 0
    path: str | None = None


@dataclass(frozen=True, eq=False, repr=False)
class Download(Event):
    """An output file was written locally (``status``: saved, resumed, same: identical file already there)."""

    kind: ClassVar[str] = "download"
    filename: str = ""
    subfolder: str = ""
    type: str = "output"
    path: str = ""
    bytes: int = 0
    status: str = "saved"


@dataclass(frozen=True, eq=False, repr=False)
class CancelDone(Event):
    """What a cancel did: ``deleted`` (was pending), ``interrupted`` (was running) or ``none``."""

    kind: ClassVar[str] = "cancel"
    action: str = "none"
    message: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class Upload(Event):
    """A dataset file was sent to the server (``status`` sent) or found there already (``skipped``)."""

    kind: ClassVar[str] = "upload"
    file: str = ""
    status: str = "sent"
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class Notice(Event):
    """A line about lorawf's own steps (dataset, plan, preflight, run folder); ``warning`` marks advice.

    Shown on stderr in every mode; not part of the ``--json`` stream.
    """

    kind: ClassVar[str] = "notice"
    message: str = ""
    warning: bool = False


@dataclass(frozen=True, eq=False, repr=False)
class Done(Event):
    """Always the last event: the outcome, the process exit code, a one-line message, every output file."""

    kind: ClassVar[str] = "done"
    outcome: str = SUCCESS
    exit_code: int = 0
    message: str = ""
    outputs: tuple[OutputFile, ...] = ()


@dataclass(frozen=True, eq=False, repr=False)
class OutputFile(FieldValue):
    """A file listed in a node's outputs: what ``/view`` needs to fetch it."""

    node: str
    key: str
    filename: str
    subfolder: str = ""
    type: str = "output"

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "key": self.key, "filename": self.filename,
                "subfolder": self.subfolder, "type": self.type}


# ------------------------------------------------------------------------------------ pure helpers


def node_title(workflow: Mapping[str, Any] | None, node: str) -> str:
    """The node's ``_meta.title``, else its class type, else ``#<id>``."""
    spec = (workflow or {}).get(node)
    if isinstance(spec, Mapping):
        meta = spec.get("_meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("title"), str) and meta["title"].strip():
            return str(meta["title"])
        if isinstance(spec.get("class_type"), str):
            return str(spec["class_type"])
    return f"#{node}"


def node_class(workflow: Mapping[str, Any] | None, node: str) -> str | None:
    spec = (workflow or {}).get(node)
    if isinstance(spec, Mapping) and isinstance(spec.get("class_type"), str):
        return str(spec["class_type"])
    return None


def _linked_sources(workflow: Mapping[str, Any] | None, node: str) -> list[str]:
    spec = (workflow or {}).get(node)
    if not isinstance(spec, Mapping) or not isinstance(spec.get("inputs"), Mapping):
        return []
    out = []
    for value in spec["inputs"].values():
        if is_link(value):
            out.append(value[0])
    return out


def iter_output_items(outputs: Mapping[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """Yield ``(node, key, item)`` for every list item of every key of every node's UI output."""
    if not isinstance(outputs, Mapping):
        return
    for node, ui in outputs.items():
        if not isinstance(ui, Mapping):
            continue
        for key, items in ui.items():
            if isinstance(items, list):
                for item in items:
                    yield str(node), str(key), item


def output_files(outputs: Mapping[str, Any]) -> list[OutputFile]:
    """Every file in a history ``outputs`` dict: any list item that is a dict with a string ``filename``."""
    files: list[OutputFile] = []
    seen: set[tuple[str, str, str]] = set()
    for node, key, item in iter_output_items(outputs):
        if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
            ref = OutputFile(node, key, item["filename"], str(item.get("subfolder") or ""),
                             str(item.get("type") or "output"))
            ident = (ref.filename, ref.subfolder, ref.type)
            if ident not in seen:
                seen.add(ident)
                files.append(ref)
    return files


def classify_output(workflow: Mapping[str, Any] | None, node: str, key: str, item: Any) -> str:
    """Role of one output item: checkpoint, validation, loss_plot, image, file or text."""
    if isinstance(item, str):
        return "checkpoint" if item.strip().lower().endswith(".safetensors") else "text"
    filename = str(item.get("filename", "")) if isinstance(item, Mapping) else ""
    if filename.lower().endswith(".safetensors"):
        return "checkpoint"
    sources = {node_class(workflow, s) for s in _linked_sources(workflow, node)}
    if key in ("images", "gifs") or filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
        if sources & VALIDATION_CLASSES:
            return "validation"
        if sources & LOSS_PLOT_CLASSES:
            return "loss_plot"
        return "image"
    return "file"


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped (exception messages end with a newline)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


# --------------------------------------------------------------------------------------- binary frames


@dataclass(frozen=True, eq=False, repr=False)
class BinaryFrame(FieldValue):
    """Header of a binary websocket frame (docs/protocol.md §2.5).

    ``payload`` is the image or text after the header.
    """

    event_type: int
    image_type: str | None = None
    metadata: Mapping[str, Any] | None = None
    node: str | None = None
    payload_offset: int = 0
    length: int = 0


_IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}


def parse_binary_frame(frame: bytes) -> BinaryFrame | None:
    """Parse a binary frame's header by its 4-byte big-endian type; ``None`` when it is malformed."""
    if len(frame) < 4:
        return None
    (event_type,) = struct.unpack(">I", frame[:4])
    try:
        if event_type in (1, 2):
            (fmt,) = struct.unpack(">I", frame[4:8])
            return BinaryFrame(event_type, _IMAGE_FORMATS.get(fmt), None, None, 8, len(frame))
        if event_type == 3:
            (nlen,) = struct.unpack(">I", frame[4:8])
            node = frame[8:8 + nlen].decode("utf-8", "replace")
            return BinaryFrame(event_type, None, None, node, 8 + nlen, len(frame))
        if event_type == 4:
            (mlen,) = struct.unpack(">I", frame[4:8])
            meta = json.loads(frame[8:8 + mlen].decode("utf-8"))
            if not isinstance(meta, dict):
                return None
            meta_node = meta.get("display_node_id") or meta.get("node_id")
            return BinaryFrame(event_type, meta.get("image_type"), meta,
                               None if meta_node is None else str(meta_node),
                               8 + mlen, len(frame))
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
    return BinaryFrame(event_type, None, None, None, 4, len(frame))


# ------------------------------------------------------------------------------------------- the fold


@dataclass
class LoopInfo:
    node: str
    index: int
    steps: int | None
    done: bool = False
    value: int = 0
    max_seen: int = 0


@dataclass
class RunState:
    """The state of one run, folded from server messages. Pure: no clock, no I/O.

    ``phase`` goes ``submitted`` → ``queued`` → ``running`` → ``finished``. ``outcome`` is set by the
    terminal event (``execution_success``/``_error``/``_interrupted``) and confirmed by :meth:`feed_history`,
    which sets ``confirmed``; only a confirmed run is over.
    """

    prompt_id: str
    workflow: Mapping[str, Any] | None = None
    loop_classes: frozenset[str] = DEFAULT_LOOP_CLASSES
    phase: str = "submitted"
    current_node: str | None = None
    outcome: str | None = None
    done_signal: bool = False
    confirmed: bool = False
    error: ErrorEvent | None = None
    cached: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    position: int | None = None
    number: float | int | None = None
    loops: dict[str, LoopInfo] = field(default_factory=dict)
    #: The server's own clock (ms since the epoch) at ``execution_start`` and at the terminal message: the
    #: run's true times, also when lorawf only re-attached later (``lorawf resume``).
    server_started_ms: int | None = None
    server_finished_ms: int | None = None
    _announced: set[tuple[str, str, str]] = field(default_factory=set)
    _warned_blocked: int = 0
    _titles: dict[str, str] = field(default_factory=dict)  # node -> title (the workflow does not change)

    def __post_init__(self) -> None:
        self._find_loops()

    # -- workflow-derived facts --------------------------------------------------------------------
    def _find_loops(self) -> None:
        wf = self.workflow or {}
        loop_nodes = [n for n in wf if node_class(wf, n) in self.loop_classes]
        for index, node in enumerate(_dependency_order(wf, loop_nodes), start=1):
            spec = wf.get(node) or {}
            steps = (spec.get("inputs") or {}).get("steps")
            planned = int(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) else None
            self.loops[node] = LoopInfo(node, index, planned)

    def ref(self, node: str) -> NodeRef:
        return NodeRef(node, node_title(self.workflow, node), node_class(self.workflow, node))

    @property
    def overall(self) -> tuple[int, int] | None:
        """``(value, max)`` summed over all training loops, or ``None`` when there is no loop."""
        if not self.loops:
            return None
        total = value = 0
        for loop in self.loops.values():  # a handful of loops, summed at every progress message
            steps = loop.steps
            if steps is None:
                steps = max(loop.value, loop.max_seen)
            total += steps
            value += steps if loop.done or loop.value > steps else loop.value
        return value, total

    @property
    def finished(self) -> bool:
        """True once the outcome is known and confirmed from history."""
        return self.confirmed

    # -- feeding ---------------------------------------------------------------------------------
    def feed(self, message: Mapping[str, Any]) -> list[Event]:
        """Fold one decoded websocket JSON message; messages for other prompts give no event."""
        mtype = message.get("type")
        data = message.get("data")
        if not isinstance(mtype, str) or not isinstance(data, Mapping):
            return []
        pid = data.get("prompt_id")
        if mtype == "progress" and pid == self.prompt_id:  # nearly every message of a run: the short way
            return self._on_progress(data)
        if mtype == "executing" and "prompt_id" not in data:
            # The reconnect greeting (docs/protocol.md §2.1): bare executing, sent only because our clientId
            # owns the run.
            node = data.get("node")
            if node is None or self.phase == "finished" or self.outcome is not None:
                return []
            return self._start() + self._executing(str(node))
        if pid != self.prompt_id:
            return []
        if mtype.startswith("execution_"):
            self._note_server_time(mtype, data)
        handler = _HANDLERS.get(mtype)
        if handler is None:
            return []
        events: list[Event] = handler(self, data)
        return events

    def feed_binary(self, frame: BinaryFrame) -> list[Event]:
        """Fold a parsed binary frame: previews of our prompt become a ``preview`` event."""
        if frame.event_type == 4:
            if (frame.metadata or {}).get("prompt_id") != self.prompt_id:
                return []
            return [Preview(self.prompt_id, frame.node, frame.image_type, frame.length - frame.payload_offset)]
        if frame.event_type == 1 and self.phase == "running" and self.outcome is None:
            return [Preview(self.prompt_id, self.current_node, frame.image_type,
                            frame.length - frame.payload_offset)]
        return []

    def feed_queue(self, queue: Mapping[str, Any]) -> list[Event]:
        """Fold a ``GET /queue`` answer: queue position while pending, the start when it runs."""
        running = [item for item in _items(queue.get("queue_running")) if item[1] == self.prompt_id]
        if running:
            return self._start()
        pending = sorted(_items(queue.get("queue_pending")), key=lambda it: (_num(it[0]), str(it[1])))
        for rank, item in enumerate(pending, start=1):
            if item[1] == self.prompt_id:
                if self.phase in ("submitted", "queued") and (self.position != rank or self.phase != "queued"):
                    self.phase = "queued"
                    self.position = rank
                    return [Queued(self.prompt_id, self.number, rank)]
                return []
        return []

    def in_queue(self, queue: Mapping[str, Any]) -> str | None:
        """``"running"``, ``"pending"`` or ``None`` for our prompt in a ``/queue`` answer."""
        if any(item[1] == self.prompt_id for item in _items(queue.get("queue_running"))):
            return "running"
        if any(item[1] == self.prompt_id for item in _items(queue.get("queue_pending"))):
            return "pending"
        return None

    def feed_history(self, entry: Mapping[str, Any]) -> list[Event]:
        """Fold our ``/history`` entry: final outputs (announcing any not yet seen) and the confirmed outcome."""
        events: list[Event] = []
        if self.phase in ("submitted", "queued"):
            events += self._start()
        outputs = entry.get("outputs")
        if isinstance(outputs, Mapping):
            self.outputs = {str(k): dict(v) for k, v in outputs.items() if isinstance(v, Mapping)}
            events += self._announce(outputs)
        status = entry.get("status")
        outcome = SUCCESS
        last_type: str | None = None
        last_data: Mapping[str, Any] = {}
        if isinstance(status, Mapping):
            messages = [m for m in status.get("messages") or [] if isinstance(m, list) and len(m) == 2]
            for mtype, mdata in messages:
                if isinstance(mtype, str) and isinstance(mdata, Mapping):
                    self._note_server_time(mtype, mdata)
                if mtype in ("execution_error", "execution_interrupted", "execution_success"):
                    last_type, last_data = mtype, mdata if isinstance(mdata, Mapping) else {}
                if mtype == "execution_cached" and not self.cached and isinstance(mdata, Mapping):
                    events += self._on_execution_cached(mdata)
            if status.get("status_str") == "error" or status.get("completed") is False:
                outcome = INTERRUPTED if last_type == "execution_interrupted" else FAILED
        if outcome == FAILED and self.error is None:
            if last_type == "execution_error":
                events += self._on_execution_error({**last_data, "timestamp": last_data.get("timestamp", 0)},
                                                   final=False)
            else:
                self.error = ErrorEvent(self.prompt_id, "execution_error", "the run failed (no details in history)")
                events.append(self.error)
        if outcome == INTERRUPTED and self.outcome != INTERRUPTED:
            node = last_data.get("node_id")
            if node is not None:
                self.current_node = str(node)
        self.outcome = outcome
        self.phase = "finished"
        self.confirmed = True
        return events

    def _note_server_time(self, mtype: str, data: Mapping[str, Any]) -> None:
        stamp = data.get("timestamp")
        if not isinstance(stamp, (int, float)) or isinstance(stamp, bool) or not 0 < stamp < 2**53:
            return
        if mtype == "execution_start" and self.server_started_ms is None:
            self.server_started_ms = int(stamp)
        elif mtype in ("execution_success", "execution_interrupted") or (
                mtype == "execution_error" and data.get("exception_type") != "ExecutionBlocked"):
            self.server_finished_ms = int(stamp)

    # -- message handlers ------------------------------------------------------------------------
    def _start(self) -> list[Event]:
        if self.phase in ("running", "finished"):
            return []
        self.phase = "running"
        self.position = None
        return [Started(self.prompt_id)]

    def _on_execution_start(self, data: Mapping[str, Any]) -> list[Event]:
        return self._start()

    def _on_execution_cached(self, data: Mapping[str, Any]) -> list[Event]:
        nodes = [str(n) for n in data.get("nodes") or []]
        new = [n for n in nodes if n not in self.cached]
        self.cached.extend(new)
        for node in new:
            if node in self.loops:
                self.loops[node].done = True
        if not new:
            return []
        return [Cached(self.prompt_id, tuple(self.ref(n) for n in new))]

    def _executing(self, node: str) -> list[Event]:
        if self.current_node is not None and self.current_node != node:
            self._finish_node(self.current_node)
        self.current_node = node
        ref = self.ref(node)
        loop = self.loops.get(node)
        if loop is not None:
            loop.value = 0
        overall = self.overall
        return [Executing(self.prompt_id, node, ref.title, ref.class_type,
                          loop.index if loop else None, len(self.loops),
                          overall[0] if overall else None, overall[1] if overall else None)]

    def _finish_node(self, node: str) -> None:
        if node not in self.executed:
            self.executed.append(node)
        loop = self.loops.get(node)
        if loop is not None:
            loop.done = True

    def _on_executing(self, data: Mapping[str, Any]) -> list[Event]:
        node = data.get("node")
        if node is None:
            if self.current_node is not None:
                self._finish_node(self.current_node)
            self.done_signal = True  # history is readable now; it decides the outcome
            return []
        events = self._start()
        display = data.get("display_node") or node
        return events + self._executing(str(display))

    def _on_progress(self, data: Mapping[str, Any]) -> list[Event]:
        node = data.get("node")
        node = str(node) if node is not None else self.current_node
        if node is None:
            return []
        value, maximum = _int(data.get("value")), _int(data.get("max"))
        loop = self.loops.get(node)
        if loop is not None:
            loop.value = value
            loop.max_seen = max(loop.max_seen, maximum)
        overall = self.overall
        title = self._titles.get(node)
        if title is None:
            title = self._titles[node] = node_title(self.workflow, node)
        progress = Progress(self.prompt_id, node, title, value, maximum,
                            overall[0] if overall else None, overall[1] if overall else None)
        if self.phase == "running":
            return [progress]
        return [*self._start(), progress]

    def _on_progress_state(self, data: Mapping[str, Any]) -> list[Event]:
        nodes = data.get("nodes")
        if isinstance(nodes, Mapping):
            for node_id, info in nodes.items():
                if isinstance(info, Mapping) and info.get("state") == "finished":
                    shown = str(info.get("display_node_id") or node_id)
                    if shown in self.loops:
                        self.loops[shown].done = True
        return []

    def _on_executed(self, data: Mapping[str, Any]) -> list[Event]:
        output = data.get("output")
        node = str(data.get("display_node") or data.get("node"))
        if not isinstance(output, Mapping):
            return []
        merged = self.outputs.setdefault(node, {})
        for key, items in output.items():
            if isinstance(items, list):
                merged.setdefault(str(key), []).extend(items)
        return self._announce({node: output})

    def _announce(self, outputs: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        for node, key, item in iter_output_items(outputs):
            title = node_title(self.workflow, node)
            role = classify_output(self.workflow, node, key, item)
            if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                ident = ("file", str(item.get("subfolder") or ""), item["filename"])
                if ident in self._announced:
                    continue
                self._announced.add(ident)
                events.append(Output(self.prompt_id, node, title, key, role, item["filename"],
                                     str(item.get("subfolder") or ""), str(item.get("type") or "output")))
            elif isinstance(item, str):
                ident = ("text", node, f"{key}\0{item}")
                if ident in self._announced:
                    continue
                self._announced.add(ident)
                events.append(Output(self.prompt_id, node, title, key, role, text=item))
        return events

    def _on_execution_success(self, data: Mapping[str, Any]) -> list[Event]:
        if self.current_node is not None:
            self._finish_node(self.current_node)
        self.outcome = SUCCESS
        return []

    def _on_execution_error(self, data: Mapping[str, Any], final: bool = True) -> list[Event]:
        node = data.get("node_id")
        node = None if node is None else str(node)
        exc_type = data.get("exception_type")
        message = first_line(str(data.get("exception_message") or ""))
        if exc_type == "ExecutionBlocked" and "timestamp" not in data:
            # Not terminal (docs/protocol.md §2.3): a node was blocked with a message; the run goes on.
            self._warned_blocked += 1
            return [WarningEvent(self.prompt_id, "execution_blocked",
                            f"node {node} blocked: {message}" if node else f"execution blocked: {message}")]
        title = node_title(self.workflow, node) if node else None
        node_type = data.get("node_type")
        shown = f"{node_type or title} #{node}" if node else str(node_type or "node")
        if title and node_type and title != node_type:
            shown = f"{node_type} #{node} \"{title}\""
        tb = data.get("traceback")
        self.error = ErrorEvent(
            self.prompt_id, "execution_error", f"{shown}: {exc_type}: {message}", node, title,
            None if node_type is None else str(node_type), None if exc_type is None else str(exc_type), message,
            tuple(str(t) for t in tb) if isinstance(tb, list) else None,
        )
        self.outcome = FAILED
        return [self.error]

    def _on_execution_interrupted(self, data: Mapping[str, Any]) -> list[Event]:
        node = data.get("node_id")
        if node is not None:
            self.current_node = str(node)
        self.outcome = INTERRUPTED
        return []

    # -- summary ---------------------------------------------------------------------------------
    def files(self) -> list[OutputFile]:
        return output_files(self.outputs)

    def describe_outcome(self) -> str:
        """One line describing the outcome, for ``done`` and for errors."""
        if self.outcome == SUCCESS:
            n = len(self.files())
            return f"prompt {self.prompt_id} succeeded ({n} output file{'s' if n != 1 else ''})"
        if self.outcome == FAILED:
            detail = self.error.message if self.error else "execution error"
            return f"prompt {self.prompt_id} failed: {detail}"
        if self.outcome == INTERRUPTED:
            where = f" at node {self.current_node} {node_title(self.workflow, self.current_node)!s}" \
                if self.current_node else ""
            return f"prompt {self.prompt_id} was interrupted{where}"
        return f"prompt {self.prompt_id} is {self.phase}"


#: ``type`` of a websocket message -> the :class:`RunState` method that folds it (built once, not per message).
_HANDLERS: dict[str, Any] = {
    name[len("_on_"):]: method for name, method in vars(RunState).items() if name.startswith("_on_")
}


def _dependency_order(workflow: Mapping[str, Any], nodes: Sequence[str]) -> list[str]:
    """Order ``nodes`` so that a node comes after every node it (transitively) depends on."""
    memo: dict[str, int] = {}

    def depth(node: str, stack: frozenset[str]) -> int:
        if node in memo:
            return memo[node]
        if node in stack:
            return 0
        sources = _linked_sources(workflow, node)
        value = 1 + max((depth(s, stack | {node}) for s in sources if s in workflow), default=0)
        memo[node] = value
        return value

    order = {n: i for i, n in enumerate(nodes)}
    return sorted(nodes, key=lambda n: (depth(n, frozenset()), order[n]))


def _items(value: Any) -> list[list[Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, list) and len(item) >= 2]


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def sorted_pending(queue: Mapping[str, Any]) -> list[list[Any]]:
    """``queue_pending`` sorted by number (then prompt id): the order in which they will run."""
    return sorted(_items(queue.get("queue_pending")), key=lambda it: (_num(it[0]), str(it[1])))


def running_items(queue: Mapping[str, Any]) -> list[list[Any]]:
    return _items(queue.get("queue_running"))
