"""Equality, hashing and ``repr`` by fields, written once for the many small frozen dataclasses of events and
follow actions.

``@dataclass`` compiles those three methods anew for every class (``exec`` of generated source), half of the
work it does per class; for the 20 event types that was about 10 ms of every server command's start
(docs/bench.md). Classes declared ``@dataclass(frozen=True, eq=False, repr=False)`` on this base behave as a
plain frozen dataclass does: equal when of the same class with equal fields, hashable when their fields are.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any


class FieldValue:
    """Base of frozen dataclasses compared, hashed and shown by their fields."""

    __slots__ = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)  # type: ignore[arg-type]
        return f"{self.__class__.__qualname__}({shown})"
