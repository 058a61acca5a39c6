"""Server-supplied output names never become paths outside the download folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorawf.safepaths import (
    UnsafePath,
    check_component,
    free_name,
    is_within,
    local_path,
    numbered,
    partial_path,
    relative_path,
    subfolder_parts,
)

HOSTILE_FILENAMES = [
    "", ".", "..", "../x", "../../x", "/etc/passwd", "a/b.png", "a\\b.png", "..\\x", "C:evil.png",
    "c:\\windows\\x", "x\x00.png", "x\n.png", "CON", "nul.txt", "trailing. ", "x.png.", " lead.png", "a" * 300,
]


@pytest.mark.parametrize("name", HOSTILE_FILENAMES)
def test_hostile_filenames_are_rejected(name: str) -> None:
    with pytest.raises(UnsafePath):
        relative_path("", name)


@pytest.mark.parametrize("sub", ["..", "../..", "../../", "a/../..", "/abs", "C:/x", "a\\b", "a/./b", "x\x00"])
def test_hostile_subfolders_are_rejected(sub: str) -> None:
    with pytest.raises(UnsafePath):
        subfolder_parts(sub)


def test_ordinary_names_are_kept() -> None:
    assert relative_path("", "accept_00002_.txt").as_posix() == "accept_00002_.txt"
    assert relative_path("accept_sub", "view_00001_.txt").as_posix() == "accept_sub/view_00001_.txt"
    assert relative_path("a//b/", "x.png").as_posix() == "a/b/x.png"
    assert check_component("my img (1).png") == "my img (1).png"
    assert subfolder_parts(None) == [] and subfolder_parts("") == []


def test_local_path_stays_inside_dest(tmp_path: Path) -> None:
    path = local_path(tmp_path, "loras/run1", "flux_lora-step00250.safetensors")
    assert path == tmp_path / "loras" / "run1" / "flux_lora-step00250.safetensors"
    assert is_within(path, tmp_path)
    assert local_path(tmp_path, "", "p.png", "temp") == tmp_path / "temp" / "p.png"
    assert not is_within(tmp_path.parent / "x", tmp_path)


def test_collisions_get_numbered_names(tmp_path: Path) -> None:
    taken = {tmp_path / "a.png", tmp_path / "a (1).png"}
    assert free_name(tmp_path / "a.png", lambda p: p in taken) == tmp_path / "a (2).png"
    assert free_name(tmp_path / "b.png", lambda p: p in taken) == tmp_path / "b.png"
    assert numbered(Path("noext"), 3) == Path("noext (3)")
    assert numbered(Path("x.tar.gz"), 1) == Path("x.tar (1).gz")


def test_partial_name_is_hidden_in_same_folder(tmp_path: Path) -> None:
    final = tmp_path / "a.png"
    assert partial_path(final) == tmp_path / ".a.png.part"
