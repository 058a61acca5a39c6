"""Scan a local training-image folder the way FluxTrainer (kohya) will read it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lorawf.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_EXTENSION = ".txt"


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


def scan_dataset(path: Path) -> DatasetScan:
    """Count the training images in ``path``; a missing, unreadable or image-less folder is a DatasetError."""
    folder = Path(path)
    if not folder.exists():
        raise DatasetError(f"{folder}: dataset folder does not exist", hint="check the path, or pass --images N")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is not a folder; give the folder that holds the training images")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError:
        raise DatasetError(f"{folder}: dataset folder is not readable (permission denied)") from None
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot read dataset folder: {exc.strerror or exc}") from None

    names = {e.name for e in entries}
    images: list[str] = []
    ignored: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and is_training_image(entry.name):
            images.append(entry.name)
        elif not entry.name.endswith(CAPTION_EXTENSION):
            ignored.append(entry.name)
    if not images:
        found = f"; found {len(ignored)} other item(s)" if ignored else ""
        raise DatasetError(
            f"{folder}: no training images (.png .jpg .jpeg .webp .bmp at the top level){found}",
        )
    captioned = tuple(n for n in images if os.path.splitext(n)[0] + CAPTION_EXTENSION in names)
    uncaptioned = tuple(n for n in images if n not in set(captioned))
    return DatasetScan(folder, tuple(images), captioned, uncaptioned, tuple(ignored))
