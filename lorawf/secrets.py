"""Secrets: the one rule for bearer tokens and header values, where they enter and wherever text leaves.

A token or header value is checked when it enters (:func:`check_credential`: no control characters, no
non-ASCII, never echoed in the error), and every text lorawf shows or writes goes through one
:class:`Secrets` (``scrub`` for output and events, ``find`` for run records), with one minimum length:
a value shorter than :data:`MIN_SECRET_LENGTH` (``X-Debug: 1``) would match everywhere and is not a secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lorawf.errors import UsageError

#: Values shorter than this are not treated as secrets (a header value like ``1`` would match any text).
MIN_SECRET_LENGTH = 6
REDACTED = "***"
#: Authorization schemes whose credential part is a secret on its own, too.
_SCHEMES = ("bearer ", "basic ", "token ", "digest ")


def check_credential(value: str, where: str) -> str:
    """Return ``value`` without surrounding whitespace, or refuse it without echoing it.

    ``where`` names the source (``LORAWF_TOKEN``, ``--header Authorization``). A CR left by a CRLF
    ``.env`` file is surrounding whitespace and is dropped; a control character or a non-ASCII character
    inside cannot be sent in an HTTP header and is a usage error.
    """
    value = value.strip()
    for char in value:
        if char == "\t":
            continue
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise UsageError(f"{where}: the value contains a control character (value not shown); "
                             "remove line breaks and other control characters")
        if ord(char) > 0x7E:
            raise UsageError(f"{where}: the value contains a non-ASCII character (value not shown); "
                             "HTTP headers carry ASCII only")
    return value


@dataclass(frozen=True)
class Secrets:
    """The secret strings of one command, and the one way to keep them out of text."""

    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, raw: Iterable[str]) -> Secrets:
        """Every value long enough to be a secret, plus the credential of ``Bearer <x>``-style values."""
        found: list[str] = []
        for value in raw:
            if not isinstance(value, str):
                continue
            candidates = [value]
            lowered = value.lower()
            for scheme in _SCHEMES:
                if lowered.startswith(scheme):
                    candidates.append(value[len(scheme):].strip())
            for candidate in candidates:
                if len(candidate) >= MIN_SECRET_LENGTH and candidate not in found:
                    found.append(candidate)
        # longest first: a value that contains another is replaced whole
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def __bool__(self) -> bool:
        return bool(self.values)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.values:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def scrub_obj(self, value: Any) -> Any:
        """A JSON-like value with every string (keys included) scrubbed."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, list):
            return [self.scrub_obj(v) for v in value]
        if isinstance(value, dict):
            return {self.scrub(str(k)): self.scrub_obj(v) for k, v in value.items()}
        return value

    def find(self, text: str) -> str | None:
        """The first secret that ``text`` contains, raw or JSON-escaped (for records); ``None`` if clean."""
        for secret in self.values:
            escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
            if secret in text or escaped in text:
                return secret
        return None


#: A command without secrets (no token, no headers).
NO_SECRETS = Secrets()
