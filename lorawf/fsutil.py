"""Small filesystem helpers: atomic writes, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from lorawf.errors import InputError

CHUNK = 1 << 20  # read size for hashing: flat memory whatever the file size


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, then rename over it."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or Path("."))
    except OSError as exc:
        raise InputError(f"{path}: cannot write here: {exc.strerror or exc}",
                         hint="check that the folder exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes` (``\\n`` line endings on every platform)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read in 1 MiB chunks (flat memory for multi-GB checkpoints)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def remove_empty_dirs(root: Path) -> None:
    """Remove the empty folders below ``root`` (deepest first; ``root`` itself stays)."""
    for path in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                       key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()  # only succeeds when empty
        except OSError:
            pass
