"""Run names: unique, file-name safe and sortable. Pure: no I/O.

A run name is ``<token stem>-<N>img-<YYYYmmdd>-<HHMMSS>`` in UTC, e.g. ``inkwash-30img-20261125-181502``.
It becomes the LoRA ``output_name``, the server subfolder of the run and the local run folder, so two runs
never overwrite each other's checkpoints: FluxTrainer reuses a file name whenever ``output_name``,
``network_dim`` and ``save_dtype`` repeat (docs/fluxtrainer.md §5.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from datetime import datetime, timezone

from lorawf.errors import InputError
from lorawf.printable import printable
from lorawf.safepaths import file_stem

#: Longest token part kept, so ``<name>_rank<dim>_<dtype>-step<NNNNN>.safetensors`` stays far below 255 bytes.
MAX_STEM = 64

#: Longest ``--name``: FluxTrainer writes ``<name>_rank<dim>_<dtype>-step<NNNNNN>-state`` and
#: ``...-step<NNNNNN>.safetensors``; with a 4-digit rank and ``fp8_e4m3fn`` that adds 43 bytes, and a file
#: name must fit 255 bytes. 200 leaves room.
MAX_RUN_NAME = 200
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_run_name(name: str) -> str:
    """Return ``name`` if it can name a run folder and the LoRA files; raise :class:`InputError` otherwise."""
    if len(name) > MAX_RUN_NAME:
        raise InputError(f"--name: {len(name)} characters; at most {MAX_RUN_NAME}, so that the checkpoint "
                         "file names FluxTrainer derives from it fit the file system's 255 bytes")
    if not _NAME_RE.fullmatch(name):
        raise InputError(f"--name {printable(name)!r}: expected a plain name of letters, digits, '.', '_' and "
                         "'-' that starts with a letter or digit (it names the run folder and the LoRA files)")
    return name


def run_name(token: str, images: int, when: datetime) -> str:
    """Return ``<token stem>-<images>img-<YYYYmmdd>-<HHMMSS>`` with ``when`` in UTC.

    The token goes through :func:`lorawf.safepaths.file_stem` (``[A-Za-z0-9._-]`` only) and is cut to
    :data:`MAX_STEM` characters. A naive ``when`` is taken as local time, as :meth:`datetime.astimezone` does.
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise InputError(f"image count {images!r}: expected a whole number >= 0")
    stem = file_stem(token)[:MAX_STEM].rstrip("._-") or "style"
    utc = when.astimezone(timezone.utc)
    return f"{stem}-{images}img-{utc:%Y%m%d-%H%M%S}"


def unique_run_name(
    token: str, images: int, when: datetime, taken: Container[str] | Callable[[str], bool]
) -> str:
    """:func:`run_name`, with ``-2``, ``-3``... appended while the name is ``taken``.

    ``taken`` is a set of existing names or a predicate (e.g. ``lambda n: (root / n).exists()``); two runs
    started in the same second then still get different names.
    """
    is_taken: Callable[[str], bool] = taken if callable(taken) else taken.__contains__
    base = run_name(token, images, when)
    name, n = base, 1
    while is_taken(name):
        n += 1
        name = f"{base}-{n}"
    return name
