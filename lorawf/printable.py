"""Text that came from a server is data: escape what a terminal would obey before it is printed.

A file name, node title, exception message or traceback from a ComfyUI server (or from any node running on
it) can hold terminal escape sequences (set the title, switch colours, move the cursor), carriage returns that
overwrite a line, or Unicode direction overrides that show text in another order than it is. Everything lorawf
prints passes through :func:`printable`; ``--json`` goes through :func:`json_line`, which stays exact JSON.
"""

from __future__ import annotations

import json
from typing import Any

#: Unicode characters that reorder or hide the text around them (bidi embeddings, overrides, isolates, marks).
DIRECTION_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def is_unsafe(char: str) -> bool:
    """C0 and C1 controls, DEL, line/paragraph separators and direction controls."""
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0 or char in "\u2028\u2029" or char in DIRECTION_CONTROLS


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every unsafe character shown as an escape (``\\x1b``, ``\\r``, ``\\u202e``).

    ``multiline`` keeps line feeds (tracebacks, a rejection's indented node errors); tabs are kept too.
    """
    if not any(is_unsafe(c) for c in text):
        return text
    keep = "\n\t" if multiline else "\t"
    return "".join(c if c in keep or not is_unsafe(c) else _escape(c) for c in text)


def json_line(obj: Any, *, indent: int | None = None) -> str:
    """One JSON text for ``obj``: UTF-8 kept for readability, but C1 controls and direction controls written
    as ``\\uXXXX`` (json escapes C0 itself), so a terminal showing the NDJSON stream obeys nothing in it."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    # json escapes C0 inside strings itself; a C0 character left is the indentation's own whitespace
    if not any(is_unsafe(c) and ord(c) >= 0x20 for c in text):
        return text
    return "".join(f"\\u{ord(c):04x}" if is_unsafe(c) and ord(c) >= 0x20 else c for c in text)
