"""Time formatting: the one place for how lorawf writes and reads times and durations."""

from __future__ import annotations

import math
from datetime import datetime, timezone


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (what run records and events expect)."""
    return datetime.now(timezone.utc)


def from_epoch_ms(ms: float) -> datetime:
    """A server timestamp (milliseconds since the epoch, as ComfyUI sends them) as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def iso_utc(when: datetime) -> str:
    """``2026-11-25T18:15:02.123Z``: UTC, millisecond precision. A naive ``when`` is taken as local time."""
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_now() -> str:
    """:func:`iso_utc` of now: the ``time`` of every ``--json`` event."""
    return iso_utc(utc_now())


def parse_iso(text: str) -> datetime:
    """Parse an ISO-8601 time written by :func:`iso_utc` (``Z`` accepted on Python 3.10); result is UTC."""
    value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def local_clock() -> str:
    """``18:15:02``, local time: the stamp of plain log lines."""
    return datetime.now().strftime("%H:%M:%S")


def local_datetime(when: datetime) -> str:
    """``2026-11-25 18:15:02`` in ``when``'s own zone: a time in tables (``lorawf runs`` shows UTC)."""
    return when.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """``MM:SS`` or ``H:MM:SS``; ``--:--`` when unknown (no rate yet, negative, absurd)."""
    if seconds is None or math.isnan(seconds) or seconds < 0 or seconds > 1e8:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
