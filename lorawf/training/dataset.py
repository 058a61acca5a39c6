"""Scan a local training-image folder the way FluxTrainer (kohya) will read it.

The scan is also the check of every file that is planned for or uploaded (``plan``, ``patch`` and ``run`` all
start here, and ``lorawf/net/upload_plan.py`` sends only what it lists): an empty image, a file whose first
bytes are not the format its extension names, and a symlink that leads out of the folder are refused before
anything is written or sent. Only the first bytes are read; nothing is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lorawf.errors import DatasetError
from lorawf.printable import printable

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_EXTENSION = ".txt"

#: The format each image extension claims, and the extension to suggest for a file of each format.
CLAIMED_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP"}
FORMAT_EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WebP": ".webp", "BMP": ".bmp"}
HEADER_BYTES = 12  # enough for the longest signature below (WebP: ``RIFF<size>WEBP``)


def image_format(header: bytes) -> str | None:
    """The format (``PNG``, ``JPEG``, ``WebP``, ``BMP``) whose signature ``header`` (a file's first bytes)
    starts with, or None."""
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if header.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WebP"
    if header.startswith(b"BM"):
        return "BMP"
    return None


@dataclass(frozen=True)
class DatasetScan:
    """What a dataset folder holds: training images (top level only) and their caption files."""

    path: Path
    images: tuple[str, ...]  # file names, sorted
    captioned: tuple[str, ...]
    uncaptioned: tuple[str, ...]
    ignored: tuple[str, ...]  # other visible files and folders, for the report

    @property
    def image_count(self) -> int:
        return len(self.images)

    def summary(self) -> str:
        """One line, e.g. ``43 images in data/style (40 with captions, 3 without)``."""
        return (
            f"{self.image_count} images in {self.path} "
            f"({len(self.captioned)} with captions, {len(self.uncaptioned)} without)"
        )


def is_training_image(name: str) -> bool:
    """True for a visible file name with an image extension the trainer reads (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def caption_name(image: str) -> str:
    """``ink_00.png`` -> ``ink_00.txt``: the caption file kohya reads beside an image."""
    return os.path.splitext(image)[0] + CAPTION_EXTENSION


def scan_dataset(path: Path) -> DatasetScan:
    """Count the training images in ``path`` and check every file that would be read or sent.

    A missing, unreadable or image-less folder, and a bad image or caption file, is a one-line DatasetError.
    """
    folder = Path(path)
    entries = _list_folder(folder)
    files = {e.name for e in entries if _is_file(e, folder)}
    images: list[str] = []
    ignored: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.name in files and is_training_image(entry.name):
            images.append(entry.name)
        elif not entry.name.endswith(CAPTION_EXTENSION):
            ignored.append(entry.name)
    if not images:
        found = f"; found {len(ignored)} other item(s)" if ignored else ""
        raise DatasetError(
            f"{folder}: no training images (.png .jpg .jpeg .webp .bmp at the top level){found}",
        )
    captioned = tuple(n for n in images if caption_name(n) in files)
    uncaptioned = tuple(n for n in images if n not in set(captioned))
    _check_files(folder, images, [caption_name(n) for n in captioned])
    return DatasetScan(folder, tuple(images), captioned, uncaptioned, tuple(ignored))


def _list_folder(folder: Path) -> list[os.DirEntry[str]]:
    if not folder.exists():
        raise DatasetError(f"{folder}: dataset folder does not exist", hint="check the path, or pass --images N")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is not a folder; give the folder that holds the training images")
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except PermissionError:
        raise DatasetError(f"{folder}: dataset folder is not readable (permission denied)",
                           hint=f"fix its permissions, e.g. chmod u+rx {folder}") from None
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot read dataset folder: {exc.strerror or exc}") from None


def _is_file(entry: os.DirEntry[str], folder: Path) -> bool:
    """True for a regular file (or a symlink to one); a FIFO or device named like an image is never opened."""
    try:
        return entry.is_file()
    except OSError as exc:
        raise DatasetError(f"{printable(str(folder / entry.name))}: cannot read: {exc.strerror or exc}") from None


def _check_files(folder: Path, images: Iterable[str], captions: Iterable[str]) -> None:
    """Raise one DatasetError naming the first bad file (and how many more there are)."""
    root = folder.resolve()
    problems = [p for p in (_image_problem(folder, root, n) for n in images) if p]
    problems += [p for p in (_link_problem(folder, root, n) for n in captions) if p]
    if problems:
        more = f"and {len(problems) - 1} more bad file(s) in this folder" if len(problems) > 1 else None
        raise DatasetError(problems[0], hint=more)


def _link_problem(folder: Path, root: Path, name: str) -> str | None:
    """A symlink that resolves outside the dataset folder: its target would be read and uploaded."""
    path = folder / name
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.is_relative_to(root):
        return None
    return (f"{printable(str(path))}: is a symlink to {printable(str(target))}, outside the dataset folder; "
            f"copy the file into {printable(str(folder))} or remove the link")


def _image_problem(folder: Path, root: Path, name: str) -> str | None:
    """What is wrong with one training image (a symlink out, empty, not the format of its extension), or None."""
    link = _link_problem(folder, root, name)
    if link:
        return link
    path = folder / name
    shown = printable(str(path))
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER_BYTES)
    except OSError as exc:
        return f"{shown}: cannot read this image: {exc.strerror or exc}; fix its permissions or remove it"
    if not header:
        return f"{shown}: empty file (0 bytes); replace it with the real image or remove it"
    extension = os.path.splitext(name)[1]
    claimed = CLAIMED_FORMAT[extension.lower()]
    actual = image_format(header)
    if actual == claimed:
        return None
    if actual is None:
        return (f"{shown}: not a {claimed} image (its first bytes are not those of a PNG, JPEG, WebP or BMP "
                "file); re-export it as an image or remove it")
    renamed = printable(os.path.splitext(name)[0] + FORMAT_EXTENSION[actual])
    return f"{shown}: named {printable(extension)} but it is a {actual} file, not {claimed}; rename it to {renamed}"
