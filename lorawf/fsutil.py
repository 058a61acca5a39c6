"""Small filesystem helpers: atomic writes, so an interrupted run never leaves a half-written file, and one
way to read a file lorawf was pointed at (one line naming it, never a traceback)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from lorawf.errors import InputError, LorawfError

CHUNK = 1 << 20  # read size for hashing: flat memory whatever the file size


def read_text(path: Path, *, missing: str, error: type[LorawfError] = InputError) -> str:
    """The UTF-8 text of ``path``; a missing file is ``error("<path>: <missing>")``, any other problem
    ``error("<path>: cannot read: <reason>")``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as every other tool would, but never half-written.

    The bytes go to a temp file beside the target, then are renamed over it. Like ``>`` in a shell: a new file
    gets the umask's mode (0644 under umask 022), a replaced file keeps its mode, a symlink is written
    through (its target is replaced, the link stays), and a device such as ``/dev/null`` is written into,
    never replaced. A folder, an empty name or a missing parent folder is one :class:`InputError`; no
    folder is ever created here.
    """
    target, st = _inspect(Path(path))
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_in_place(path, target, data)
        return
    fd, tmp_name = _create_temp(path, target)
    try:
        with os.fdopen(fd, "wb") as handle:
            if st is not None:
                _keep_mode_and_owner(handle.fileno(), st)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def check_write_target(path: Path) -> None:
    """Raise the :class:`InputError` that :func:`atomic_write_bytes` would raise for ``path``, writing nothing,
    so a command can refuse a bad ``-o`` before it writes any of its other files."""
    target, st = _inspect(Path(path))
    if st is None and not os.path.isdir(target.parent):
        raise _cannot_write(path, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))


def _inspect(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file a write to ``path`` lands in (a symlink's target, so the link stays) and its stat, ``None``
    when it does not exist yet; an empty name or a folder is an :class:`InputError`."""
    if str(path) == ".":  # also what Path("") is: an empty -o
        raise InputError("'' (or '.') is not a file name", hint="give the name of the file to write")
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder, not a file", hint="give the name of the file to write")
    return target, st


def _cannot_write(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot write here: {exc.strerror or exc}",
                      hint="check that the folder exists and is writable")


def _create_temp(path: Path, target: Path) -> tuple[int, str]:
    """A new temp file beside ``target``, created with mode 0666 so the kernel applies the umask
    (``tempfile.mkstemp`` would make it 0600, and the rename would keep that)."""
    folder = target.parent
    for _attempt in range(10):  # 48 random bits: a clash is a fluke
        name = os.path.join(folder, f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    raise InputError(f"{path}: cannot write here: no free temporary file name in {folder}")


def _keep_mode_and_owner(fd: int, st: os.stat_result) -> None:
    """Give the replacement the replaced file's permissions (and, where allowed, its owner)."""
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    if hasattr(os, "fchown") and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:  # only root may give a file away; the mode is what matters
            pass


def _write_in_place(path: Path, target: Path, data: bytes) -> None:
    """Write into a device or FIFO (``-o /dev/stdout``, ``/dev/null``): renaming over it would destroy it."""
    try:
        with open(target, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


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
