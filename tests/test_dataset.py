"""The dataset scan counts images the way the trainer does and fails clearly on bad folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorawf.errors import DatasetError
from lorawf.training.dataset import scan_dataset

FIXTURE = Path(__file__).parent.parent / "fixtures" / "datasets" / "ink_wash"


def test_bundled_example_dataset() -> None:
    scan = scan_dataset(FIXTURE)
    assert scan.image_count == 30
    assert len(scan.captioned) == 24 and len(scan.uncaptioned) == 6
    assert "30 images" in scan.summary()


def test_counts_top_level_images_of_any_case_and_ignores_the_rest(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "c.jpeg", "d.WebP", "e.bmp", "f.gif", "g.txt", ".hidden.png", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.txt").write_text("caption")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a folder with an image-like name is not an image
    scan = scan_dataset(tmp_path)
    assert scan.images == ("a.png", "b.JPG", "c.jpeg", "d.WebP", "e.bmp")
    assert scan.captioned == ("a.png",)
    assert "f.gif" in scan.ignored and "sub" in scan.ignored


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_dataset(tmp_path / "x.png")


def test_empty_folder_names_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DatasetError, match="no training images.*1 other item"):
        scan_dataset(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder")
def test_unreadable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(DatasetError, match="not readable"):
            scan_dataset(locked)
    finally:
        locked.chmod(0o755)
