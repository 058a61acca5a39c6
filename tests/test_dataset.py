"""The dataset scan counts images the way the trainer does and fails clearly on bad folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorawf.errors import DatasetError
from lorawf.training.dataset import scan_dataset

FIXTURE = Path(__file__).parent.parent / "fixtures" / "datasets" / "ink_wash"

#: The first bytes of each format (what the scan checks); the rest of a test image need not decode.
SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "JPEG": b"\xff\xd8\xff\xe0\0\x10JFIF\0",
              "WebP": b"RIFF\x24\0\0\0WEBPVP8 ", "BMP": b"BM\x36\0\0\0\0\0\0\0\x36\0"}
BY_EXTENSION = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP"}


def image_bytes(name: str, body: bytes = b"x") -> bytes:
    """Bytes that pass the scan's header check for ``name``'s extension (anything else: just ``body``)."""
    fmt = BY_EXTENSION.get(os.path.splitext(name)[1].lower())
    return (SIGNATURES[fmt] if fmt else b"") + body


def test_bundled_example_dataset() -> None:
    scan = scan_dataset(FIXTURE)
    assert scan.image_count == 30
    assert len(scan.captioned) == 24 and len(scan.uncaptioned) == 6
    assert "30 images" in scan.summary()


def test_counts_top_level_images_of_any_case_and_ignores_the_rest(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "c.jpeg", "d.WebP", "e.bmp", "f.gif", "g.txt", ".hidden.png", "notes.md"):
        (tmp_path / name).write_bytes(image_bytes(name))
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


# ------------------------------------------------------------- every file that would be read or sent is checked


def write_dataset(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"img_{i}.png").write_bytes(image_bytes("x.png"))
        (folder / f"img_{i}.txt").write_text(f"caption {i}")
    return folder


@pytest.mark.parametrize("name", ["a.png", "b.PNG", "c.jpg", "d.jpeg", "e.webp", "f.bmp"])
def test_each_format_is_recognised_by_its_first_bytes_only(tmp_path: Path, name: str) -> None:
    write_dataset(tmp_path)
    (tmp_path / name).write_bytes(image_bytes(name, b"not decodable at all"))  # nothing is decoded
    assert name in scan_dataset(tmp_path).images


def test_an_empty_image_is_refused_naming_it(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / "blank.png").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        scan_dataset(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'blank.png'}: empty file (0 bytes); replace it with the real image "
                              "or remove it")


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("photo.png", SIGNATURES["JPEG"], "named .png but it is a JPEG file, not PNG; rename it to photo.jpg"),
    ("photo.jpg", SIGNATURES["PNG"], "named .jpg but it is a PNG file, not JPEG; rename it to photo.png"),
    ("photo.JPEG", SIGNATURES["WebP"], "named .JPEG but it is a WebP file, not JPEG; rename it to photo.webp"),
    ("photo.bmp", SIGNATURES["PNG"], "rename it to photo.png"),
    ("notes.webp", b"hello, I am text", "not a WebP image"),
    ("wave.webp", b"RIFF\x24\0\0\0WAVEfmt ", "not a WebP image"),  # RIFF, but not WebP
    ("short.png", b"\x89P", "not a PNG image"),
])
def test_a_file_that_is_not_the_format_its_extension_claims_is_refused(tmp_path: Path, name: str,
                                                                        content: bytes, needle: str) -> None:
    write_dataset(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError) as err:
        scan_dataset(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / name}: ") and needle in str(err.value)


def test_a_symlinked_image_that_leaves_the_folder_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds")
    (dataset / "passwd.png").symlink_to("/etc/passwd")
    with pytest.raises(DatasetError, match=r"passwd\.png: is a symlink to /etc/passwd, outside the dataset folder"):
        scan_dataset(dataset)


def test_a_symlinked_caption_that_leaves_the_folder_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds")
    outside = tmp_path / "secret.txt"
    outside.write_text("not a caption")
    (dataset / "img_0.txt").unlink()
    (dataset / "img_0.txt").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"img_0\.txt: is a symlink to .*secret\.txt, outside the dataset"):
        scan_dataset(dataset)


def test_a_symlink_through_a_relative_chain_that_leaves_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds")
    (tmp_path / "real.png").write_bytes(image_bytes("real.png"))
    (dataset / "hop.png").symlink_to("../real.png")
    (dataset / "alias.png").symlink_to("hop.png")  # inside at first, then out
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        scan_dataset(dataset)


def test_symlinks_inside_the_folder_and_a_symlinked_folder_are_fine(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds")
    (dataset / "alias.png").symlink_to("img_0.png")
    (dataset / "alias.txt").symlink_to(dataset / "img_0.txt")
    (tmp_path / "link").symlink_to(dataset)
    scan = scan_dataset(tmp_path / "link")
    assert "alias.png" in scan.captioned and scan.image_count == 4


def test_several_bad_files_are_one_line_naming_the_first_and_counting_the_rest(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"text")
    (tmp_path / "c.png").symlink_to("/etc/hostname")
    with pytest.raises(DatasetError) as err:
        scan_dataset(tmp_path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{tmp_path / 'a.png'}: empty file")
    assert text.endswith("(and 2 more bad file(s) in this folder)")


def test_a_fifo_named_like_an_image_is_not_opened(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block the scan forever
    scan = scan_dataset(tmp_path)
    assert "pipe.png" not in scan.images and "pipe.png" in scan.ignored


def test_a_folder_named_like_a_caption_is_not_a_caption(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / "img_0.txt").unlink()
    (tmp_path / "img_0.txt").mkdir()  # hashing it for the upload would fail
    assert "img_0.png" in scan_dataset(tmp_path).uncaptioned


def test_a_folder_that_cannot_be_listed_is_one_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_scandir = os.scandir

    def refuse(path: object) -> object:
        if Path(str(path)) == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(DatasetError, match=r"dataset folder is not readable \(permission denied\)"):
        scan_dataset(tmp_path)
