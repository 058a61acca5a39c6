"""Turning untrusted server-supplied file names into local paths that always stay inside one folder.

Pure: no file system access. A ComfyUI output entry names a file with ``filename`` and ``subfolder``;
both come from the server (or from whatever node produced them) and are treated as hostile: ``..``,
absolute paths, drive letters, NUL and other control characters, and backslashes are rejected, never
"cleaned up" into something else. The caller adds the one I/O check this module cannot do (symlinks):
see :func:`is_within`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

_DRIVE = re.compile(r"^[A-Za-z]:")
_RESERVED_WINDOWS = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
MAX_COMPONENT = 255


class UnsafePath(ValueError):
    """A server-supplied name that cannot be written locally without leaving the destination folder."""


def check_component(name: str, what: str = "filename") -> str:
    """Return ``name`` if it is one safe path component; raise :class:`UnsafePath` otherwise."""
    if not isinstance(name, str) or name == "":
        raise UnsafePath(f"empty {what}")
    shown = repr(name)[:80]
    if name in (".", ".."):
        raise UnsafePath(f"{what} {shown} is a relative path reference")
    if "/" in name or "\\" in name:
        raise UnsafePath(f"{what} {shown} contains a path separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafePath(f"{what} {shown} contains a control character")
    if _DRIVE.match(name) or ":" in name:
        raise UnsafePath(f"{what} {shown} contains a drive letter or ':'")
    if name.strip() != name or name.endswith("."):
        raise UnsafePath(f"{what} {shown} has leading/trailing spaces or a trailing dot")
    if name.split(".")[0].lower() in _RESERVED_WINDOWS:
        raise UnsafePath(f"{what} {shown} is a reserved device name")
    if len(name.encode("utf-8")) > MAX_COMPONENT:
        raise UnsafePath(f"{what} {shown} is too long")
    return name


def subfolder_parts(subfolder: str | None) -> list[str]:
    """Split a server ``subfolder`` (``/``-separated, relative) into safe components; ``""`` → ``[]``."""
    if not subfolder:
        return []
    if not isinstance(subfolder, str):
        raise UnsafePath("subfolder is not a string")
    shown = repr(subfolder)[:80]
    if "\\" in subfolder:
        raise UnsafePath(f"subfolder {shown} contains a backslash")
    if subfolder.startswith("/") or _DRIVE.match(subfolder):
        raise UnsafePath(f"subfolder {shown} is an absolute path")
    parts = [p for p in subfolder.split("/") if p != ""]
    for part in parts:
        if part in ("..", "."):
            raise UnsafePath(f"subfolder {shown} contains {part!r}")
        check_component(part, "subfolder")
    return parts


def relative_path(subfolder: str | None, filename: str) -> PurePosixPath:
    """The safe relative path (``subfolder/filename``) for a server output entry."""
    parts = subfolder_parts(subfolder)
    parts.append(check_component(filename, "filename"))
    return PurePosixPath(*parts)


def local_path(dest: Path, subfolder: str | None, filename: str, kind: str = "output") -> Path:
    """Where an output entry goes under ``dest``: ``dest/[<kind>/ if not output]subfolder/filename``."""
    rel = relative_path(subfolder, filename)
    base = Path(dest)
    if kind and kind != "output":
        base = base / check_component(kind, "type")
    return base.joinpath(*rel.parts)


def is_within(path: Path, root: Path) -> bool:
    """True if ``path`` is ``root`` or below it (compare resolved paths to defeat symlinks)."""
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True


def numbered(path: Path, n: int) -> Path:
    """``name.ext`` → ``name (n).ext`` (the naming ComfyUI itself uses for collisions)."""
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f"{stem} ({n}){suffix}")


def free_name(path: Path, exists: Callable[[Path], bool], limit: int = 10000) -> Path:
    """``path`` if ``exists`` says it is free, else the first free ``name (n).ext``."""
    if not exists(path):
        return path
    for n in range(1, limit):
        candidate = numbered(path, n)
        if not exists(candidate):
            return candidate
    raise UnsafePath(f"too many files named like {path.name!r}")


def partial_path(final: Path) -> Path:
    """The temp name a download is written to until it is complete (hidden, same folder)."""
    return final.with_name(f".{final.name}.part")


def file_stem(token: str) -> str:
    """The token made safe for server file names (output_name, image prefixes): [A-Za-z0-9._-] only."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", token).strip("._")
    return stem or "style"
