"""Upload planning: only safe names are sent, and files already on the server are skipped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lorawf.errors import DatasetError
from lorawf.net.upload_plan import dataset_digest, dataset_files, files_to_send, manifest, safe_upload_name
from lorawf.training.dataset import scan_dataset
from tests.test_dataset import image_bytes

FIXTURE = Path(__file__).parent.parent / "fixtures" / "datasets" / "ink_wash"


def test_bundled_dataset_sends_images_and_captions_with_real_hashes() -> None:
    files = dataset_files(scan_dataset(FIXTURE))
    assert len(files) == 30 + 24
    first = next(f for f in files if f.name == "ink_00.png")
    data = (FIXTURE / "ink_00.png").read_bytes()
    assert (first.size, first.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert "ink_00.txt" in {f.name for f in files}


@pytest.mark.parametrize("name", ["../escape.png", "a/b.png", "a\\b.png", 'q"uote.png', "nul\x00.png",
                                  "tab\t.png", "..png.png", " lead.png", "zw\u200b.png"])
def test_unsafe_names_are_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="cannot be uploaded safely"):
        safe_upload_name(name, tmp_path)


def test_names_are_nfc_normalised_and_case_collisions_refused(tmp_path: Path) -> None:
    assert safe_upload_name("cafe\u0301.png", tmp_path) == "caf\u00e9.png"
    (tmp_path / "A.png").write_bytes(image_bytes("A.png", b"1"))
    (tmp_path / "a.PNG").write_bytes(image_bytes("a.PNG", b"2"))
    with pytest.raises(DatasetError, match="would collide"):
        dataset_files(scan_dataset(tmp_path))


def test_files_already_on_the_server_are_skipped(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(image_bytes("x.png", bytes([i]) * 10))
    files = dataset_files(scan_dataset(tmp_path))
    remote = manifest(files)
    sizes = {f.name: f.size for f in files}
    assert files_to_send(files, None) == files
    assert files_to_send(files, remote, sizes) == []
    # a changed file, and a manifest entry whose file is truncated on the server, are sent again
    (tmp_path / "1.png").write_bytes(image_bytes("1.png", b"changed"))
    changed = dataset_files(scan_dataset(tmp_path))
    sizes["2.png"] = 3
    assert [f.name for f in files_to_send(changed, remote, sizes)] == ["1.png", "2.png"]
    assert dataset_digest(changed) != dataset_digest(files)
