"""Rendering run events: a live terminal display, plain log lines, or ``--json`` NDJSON.

Each display is a reporter (a callable for :class:`~lorawf.comfy.events.Event` objects) plus ``close()``.
Every string that leaves a display goes through the command's :class:`~lorawf.secrets.Secrets` as a last
defence. :class:`Console` is the reporter the commands hand to the engine.
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TextIO

from lorawf.comfy.events import (
    Cached,
    CancelDone,
    Done,
    Download,
    ErrorEvent,
    Event,
    Executing,
    Notice,
    Output,
    Preview,
    Progress,
    Queued,
    Started,
    Upload,
    WarningEvent,
)
from lorawf.printable import json_line, printable
from lorawf.secrets import NO_SECRETS, Secrets
from lorawf.timefmt import format_duration, local_clock

Clock = Callable[[], float]

_ROLE_LABEL = {
    "checkpoint": "checkpoint",
    "validation": "validation image",
    "loss_plot": "loss plot",
    "image": "image",
    "file": "file",
    "text": "text",
}


def bar(value: int, maximum: int, width: int = 28) -> str:
    frac = 0.0 if maximum <= 0 else max(0.0, min(1.0, value / maximum))
    filled = round(frac * width)
    return "█" * filled + "·" * (width - filled)


#: Columns assumed when the terminal does not say (and ``$COLUMNS`` is unset).
FALLBACK_COLUMNS = 80
BAR_MAX, BAR_MIN = 28, 8


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal behind ``stream``, asked afresh (so a resize counts at the next redraw)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    if columns <= 0:  # not a terminal, or one that does not know its size (a fresh pty says 0)
        raw = os.environ.get("COLUMNS", "")
        columns = int(raw) if raw.isdigit() else FALLBACK_COLUMNS
    return max(20, columns)


def _cells(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters count two, combining marks none)."""
    return sum(_cells(c) for c in text)


def fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` terminal columns, with ``…`` where it was cut."""
    if cells(text) <= width:
        return text
    out, used = [], 0
    for char in text:
        size = _cells(char)
        if used + size > width - 1:
            break
        out.append(char)
        used += size
    return "".join(out) + "…"


def bar_line(label: str, value: int, maximum: int, tail: str, width: int) -> str:
    """``label`` + a bar as wide as the line allows + ``tail``; without the bar when there is no room."""
    room = width - cells(label) - cells(tail) - 2
    if room < BAR_MIN:
        return fit(f"{label} {tail}", width)
    return f"{label} {bar(value, maximum, min(BAR_MAX, room))} {tail}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class RateMeter:
    """Steps per second since the first sample of the current node (pure apart from the given clock)."""

    def __init__(self) -> None:
        self.node: str | None = None
        self.t0 = 0.0
        self.v0 = 0
        self.rate: float | None = None

    def sample(self, node: str, value: int, now: float) -> float | None:
        if node != self.node or value < self.v0:
            self.node, self.t0, self.v0, self.rate = node, now, value, None
            return None
        if value > self.v0 and now > self.t0:
            self.rate = (value - self.v0) / (now - self.t0)
        return self.rate


def describe(event: Event, verbose: bool = False) -> str | None:
    """One human line for an event (``None`` for events shown only by the live bars)."""
    if isinstance(event, Queued):
        where = f", position {event.position} in queue" if event.position else ""
        number = f" (number {event.number})" if event.number is not None and not event.position else ""
        return f"queued {event.prompt_id}{number}{where}"
    if isinstance(event, Started):
        return f"started {event.prompt_id}"
    if isinstance(event, Cached):
        names = ", ".join(f"{n.node} {n.title}" for n in event.nodes)
        return f"cached: {names}"
    if isinstance(event, Executing):
        loop = f" (training loop {event.loop}/{event.loops})" if event.loop else ""
        return f"node {event.node} {event.title}{loop}"
    if isinstance(event, Progress):
        overall = ""
        if event.overall_max:
            overall = f", overall {event.overall_value}/{event.overall_max}"
        return f"  {event.title}: step {event.value}/{event.max}{overall}"
    if isinstance(event, Output):
        label = _ROLE_LABEL.get(event.role, event.role)
        if event.filename is not None:
            sub = f"{event.subfolder}/" if event.subfolder else ""
            return f"{label}: {sub}{event.filename} (node {event.node} {event.title}, {event.type})"
        text = (event.text or "").replace("\n", " ")
        return f"{label}: {text[:300]} (node {event.node} {event.title})"
    if isinstance(event, WarningEvent):
        return f"warning: {event.message}"
    if isinstance(event, ErrorEvent):
        line = f"run error: {event.message}"
        if verbose and event.traceback:
            line += "\n" + "".join(event.traceback).rstrip()
        return line
    if isinstance(event, Download):
        how = {"same": "already there", "resumed": "resumed"}.get(event.status, "saved")
        return f"downloaded {event.path} ({event.bytes} bytes, {how})"
    if isinstance(event, Preview):
        return f"preview saved: {event.path}" if event.path else None
    if isinstance(event, CancelDone):
        return event.message
    if isinstance(event, Upload):
        return (f"upload {event.files_done}/{event.files_total} files, {event.bytes_done}/{event.bytes_total} "
                f"bytes: {event.file} {event.status}")
    if isinstance(event, Done):
        return None
    return None


class JsonDisplay:
    """``--json``: one ``lorawf.event/1`` object per line; the last line is the ``done`` event."""

    def __init__(self, stream: TextIO, secrets: Secrets = NO_SECRETS, verbose: bool = False,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.stream = stream
        self.secrets = secrets
        self.verbose = verbose
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    def __call__(self, event: Event) -> None:
        obj = event.to_dict()
        if isinstance(event, ErrorEvent) and not self.verbose:
            obj["traceback"] = None
        obj["time"] = self.clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.stream.write(json_line(self.secrets.scrub_obj(obj)) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class LogDisplay:
    """No terminal: plain time-stamped lines; progress at most every 10 % or every ``every`` seconds."""

    def __init__(self, stream: TextIO, secrets: Secrets = NO_SECRETS, verbose: bool = False,
                 clock: Clock = time.monotonic, every: float = 30.0) -> None:
        self.stream = stream
        self.secrets = secrets
        self.verbose = verbose
        self.clock = clock
        self.every = every
        self._last_progress: tuple[str, int, float] | None = None

    def _write(self, line: str) -> None:
        stamp = local_clock()
        for part in printable(self.secrets.scrub(line), multiline=True).split("\n"):
            self.stream.write(f"[{stamp}] {part}\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            now = self.clock()
            bucket = int(10 * event.value / event.max) if event.max else 0
            last = self._last_progress
            if last is not None and last[0] == event.node and last[1] == bucket and now - last[2] < self.every \
                    and event.value != event.max:
                return
            self._last_progress = (event.node, bucket, now)
        if isinstance(event, Done):
            if event.outcome in ("success", "submitted"):
                self._write(event.message)
            return
        line = describe(event, self.verbose)
        if line:
            self._write(line)

    def close(self) -> None:
        self.stream.flush()


class LiveDisplay:
    """A terminal: notices scroll above a redrawn block (current node, step bar, overall bar)."""

    def __init__(self, stream: TextIO, secrets: Secrets = NO_SECRETS, verbose: bool = False,
                 clock: Clock = time.monotonic, min_interval: float = 0.1,
                 columns: Callable[[], int] | None = None) -> None:
        self.stream = stream
        self.secrets = secrets
        self.verbose = verbose
        self.clock = clock
        self.min_interval = min_interval
        self.columns = columns or (lambda: terminal_columns(stream))
        self.block_lines = 0
        self.last_draw = -1e9
        self.status = "submitting"
        self.node_line = ""
        self.step: tuple[int, int] | None = None
        self.overall: tuple[int, int] | None = None
        self.meter = RateMeter()
        self.overall_meter = RateMeter()
        self.started_at: float | None = None

    def _clear(self) -> None:
        if self.block_lines:
            self.stream.write(f"\x1b[{self.block_lines}F\x1b[J")
            self.block_lines = 0

    def _notice(self, line: str) -> None:
        self._clear()
        self.stream.write(printable(self.secrets.scrub(line), multiline=True) + "\n")
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_draw < self.min_interval:
            return
        self.last_draw = now
        # One column short of the width: a line that fills the last column wraps on many terminals.
        width = self.columns() - 1
        clean = [printable(self.secrets.scrub(text)) for text in (self.status, self.node_line)]
        lines = [fit(clean[0] + (f"  [{format_duration(now - self.started_at)}]" if self.started_at else ""),
                     width)]
        if self.node_line:
            lines.append(fit(clean[1], width))
        if self.step:
            value, maximum = self.step
            rate = self.meter.rate
            eta = (maximum - value) / rate if rate else None
            rate_text = f"{rate:.2f} it/s" if rate else "-- it/s"
            lines.append(bar_line("  step   ", value, maximum,
                                  f"{value}/{maximum}  {rate_text}  ETA {format_duration(eta)}", width))
        if self.overall and self.overall[1]:
            value, maximum = self.overall
            rate = self.overall_meter.rate or self.meter.rate
            eta = (maximum - value) / rate if rate else None
            lines.append(bar_line("  overall", value, maximum, f"{value}/{maximum}  ETA {format_duration(eta)}",
                                  width))
        if self.block_lines:
            self.stream.write(f"\x1b[{self.block_lines}F\x1b[J")
        for line in lines:
            self.stream.write(line + "\n")
        self.block_lines = len(lines)
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        now = self.clock()
        if isinstance(event, Queued):
            self.status = f"queued {event.prompt_id}" + (f" (position {event.position})" if event.position else "")
            self._draw(force=True)
        elif isinstance(event, Started):
            self.status = f"running {event.prompt_id}"
            self.started_at = now
            self._draw(force=True)
        elif isinstance(event, Executing):
            loop = f"  training loop {event.loop}/{event.loops}" if event.loop else ""
            self.node_line = f"▶ node {event.node} {event.title}{loop}"
            self.step = None
            if event.overall_max:  # a finished loop counts in full, even if its last step sent no progress
                self.overall = (event.overall_value or 0, event.overall_max)
            self._draw(force=True)
        elif isinstance(event, Progress):
            self.step = (event.value, event.max)
            self.meter.sample(event.node, event.value, now)
            if event.overall_max:
                self.overall = (event.overall_value or 0, event.overall_max)
                self.overall_meter.sample("overall", event.overall_value or 0, now)
            self._draw()
        elif isinstance(event, Done):
            self._clear()
            if event.outcome in ("success", "submitted"):
                self.stream.write(printable(self.secrets.scrub(f"✔ {event.message}")) + "\n")
            self.stream.flush()
        else:
            line = describe(event, self.verbose)
            if line:
                self._notice(line)

    def close(self) -> None:
        self._clear()
        self.stream.flush()


Display = JsonDisplay | LogDisplay | LiveDisplay


def make_display(json_mode: bool, secrets: Secrets = NO_SECRETS, verbose: bool = False,
                 stream: TextIO | None = None) -> Display:
    """``--json`` → NDJSON; a TTY stdout → the live display; otherwise plain log lines."""
    out = stream or sys.stdout
    if json_mode:
        return JsonDisplay(out, secrets, verbose)
    if out.isatty():
        return LiveDisplay(out, secrets, verbose)
    return LogDisplay(out, secrets, verbose)


class Console:
    """The commands' reporter: run events to the display; lorawf's own notices (and, without ``--json``,
    upload progress) as lines on stderr, so stdout keeps only the display or the NDJSON stream."""

    def __init__(self, display: Display, secrets: Secrets = NO_SECRETS, *, json_mode: bool = False,
                 err: TextIO | None = None) -> None:
        self.display = display
        self.secrets = secrets
        self.json_mode = json_mode
        self.err = err
        self.uploads: UploadProgress | None = None

    def line(self, text: str) -> None:
        """One line on stderr, scrubbed."""
        stream = self.err or sys.stderr
        stream.write(printable(self.secrets.scrub(text), multiline=True) + "\n")
        stream.flush()

    def __call__(self, event: Event, /) -> None:
        if isinstance(event, Notice):
            self.line(f"warning: {event.message}" if event.warning else event.message)
        elif isinstance(event, Upload) and not self.json_mode:
            if self.uploads is None:
                self.uploads = UploadProgress(self.err or sys.stderr)
            self.uploads(event)
        else:
            if self.uploads is not None:
                self.uploads.close()
            self.display(event)

    def close(self) -> None:
        if self.uploads is not None:
            self.uploads.close()
        self.display.close()


class UploadProgress:
    """Dataset upload progress: one redrawn bar on a terminal (files, bytes, rate, ETA); without one, a line
    every 10 % or 30 s. Files already on the server are counted, not listed. Ends with one summary line."""

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic, *, tty: bool | None = None,
                 columns: Callable[[], int] | None = None, every: float = 30.0, min_interval: float = 0.1) -> None:
        self.stream = stream
        self.clock = clock
        self.tty = stream.isatty() if tty is None else tty
        self.columns = columns or (lambda: terminal_columns(stream))
        self.every = every
        self.min_interval = min_interval
        self.started = clock()
        self.last: Upload | None = None
        self.skipped = 0
        self.shown_at = -1e9
        self.shown_tenth = -1
        self.drawn = False
        self.closed = False

    def __call__(self, event: Upload) -> None:
        self.last = event
        if event.status == "skipped":
            self.skipped += 1
        finished = event.files_done >= event.files_total
        now = self.clock()
        if self.tty:
            if event.bytes_total and (finished or now - self.shown_at >= self.min_interval):
                self.shown_at = now
                self.stream.write("\r\x1b[K" + fit(self._status(now), self.columns() - 1))
                self.drawn = True
                self.stream.flush()
        else:
            tenth = int(10 * event.bytes_done / event.bytes_total) if event.bytes_total else 10
            if not finished and (tenth > self.shown_tenth or now - self.shown_at >= self.every) and \
                    event.status == "sent":
                self.shown_tenth, self.shown_at = tenth, now
                self.stream.write(self._status(now) + "\n")
                self.stream.flush()
        if finished:
            self.close()

    def _rate(self, now: float) -> float | None:
        if self.last is None or not self.last.bytes_done or now <= self.started:
            return None
        return self.last.bytes_done / (now - self.started)

    def _status(self, now: float) -> str:
        event = self.last
        assert event is not None
        rate = self._rate(now)
        eta = (event.bytes_total - event.bytes_done) / rate if rate else None
        tail = (f"{event.files_done}/{event.files_total} files  {human_bytes(event.bytes_done)}/"
                f"{human_bytes(event.bytes_total)}  {human_bytes(rate) + '/s' if rate else '--/s'}  "
                f"ETA {format_duration(eta)}")
        if not self.tty:
            return f"upload {tail}"
        return bar_line("upload", event.bytes_done, event.bytes_total, tail, self.columns() - 1)

    def close(self) -> None:
        """The summary line (once), after the bar."""
        if self.closed or self.last is None:
            return
        self.closed = True
        event, now = self.last, self.clock()
        sent = event.files_done - self.skipped
        if self.tty and self.drawn:
            self.stream.write("\r\x1b[K")
        if sent == 0:
            line = f"dataset already on the server ({event.files_done} of {event.files_total} files checked)"
        else:
            line = (f"uploaded {sent} files ({human_bytes(event.bytes_done)}) in "
                    f"{format_duration(now - self.started)}"
                    + (f"; {self.skipped} already there" if self.skipped else ""))
            if event.files_done < event.files_total:
                line = f"upload stopped after {event.files_done} of {event.files_total} files: " + line
        self.stream.write(line + "\n")
        self.stream.flush()


def make_console(json_mode: bool, secrets: Secrets = NO_SECRETS, verbose: bool = False,
                 stream: TextIO | None = None) -> Console:
    """A :class:`Console` around :func:`make_display`."""
    return Console(make_display(json_mode, secrets, verbose, stream), secrets, json_mode=json_mode)
