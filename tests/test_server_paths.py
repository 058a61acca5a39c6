"""Learning ComfyUI's input/output folders from what the server tells, as recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorawf.comfy.folders import ServerFolders, learn_folders, relative_to_output
from lorawf.errors import InputError

RECORDED = json.loads((Path(__file__).parent.parent / "fixtures" / "transcripts" / "folder_paths.json").read_text())
FOLDER_PATHS = RECORDED["/internal/folder_paths"]["body"]
STATS = RECORDED["/system_stats"]["body"]


def test_learned_from_the_recorded_server() -> None:
    assert learn_folders(FOLDER_PATHS, STATS) == ServerFolders("/srv/comfy/input", "/srv/comfy/output")


def test_argv_and_overrides_win() -> None:
    stats = {"system": {"argv": ["main.py", "--output-directory", "/data/out", "--input-directory=/data/in"]}}
    assert learn_folders(FOLDER_PATHS, stats) == ServerFolders("/data/in", "/data/out")
    got = learn_folders(FOLDER_PATHS, STATS, input_override="/x/in", output_override="/x/out/")
    assert got == ServerFolders("/x/in", "/x/out")


def test_unknown_folders_say_what_to_pass() -> None:
    with pytest.raises(InputError, match="pass --server-input-dir and --server-output-dir"):
        learn_folders({}, {"system": {"argv": ["main.py"]}})


def test_server_paths_map_to_view_parameters_only_inside_output() -> None:
    folders = ServerFolders("/srv/comfy/input", "/srv/comfy/output")
    assert relative_to_output("/srv/comfy/output/lorawf/r1/a-step00250.safetensors", folders) == (
        "lorawf/r1", "a-step00250.safetensors")
    assert relative_to_output("/srv/comfy/output/top.safetensors", folders) == ("", "top.safetensors")
    assert relative_to_output("/srv/comfy/outputx/a.safetensors", folders) is None
    assert relative_to_output("/srv/comfy/output/../etc/passwd", folders) is None
    assert relative_to_output("flux_trainer_output/a.safetensors", folders) is None
