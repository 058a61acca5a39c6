"""What a user sees from `lorawf runs` and `lorawf sheet`: output, files, exit codes, one-line errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from lorawf.cli import main
from lorawf.cli.records import human_size
from lorawf.runs.record import RECORD_NAME, SHEET_NAME, FileEntry, write_record
from lorawf.runs.sheet import SheetLayout
from tests.test_record import T0, make_record


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def two_runs_and_a_corrupt_one(root: Path) -> None:
    big = FileEntry("b_rank16_bf16-step00250.safetensors", 1_500_000_000, "d" * 64, "checkpoint", 250)
    write_record(root / "b-later", make_record("b-later", start=T0 + timedelta(days=1), files=(big,)))
    write_record(root / "a-earlier", make_record("a-earlier", start=T0 - timedelta(days=2)))
    write_record(root / "c-failed", make_record("c-failed", start=T0, outcome="error", error="OOM", files=()))
    (root / "zz-broken").mkdir()
    (root / "zz-broken" / RECORD_NAME).write_text("{ truncated")


def test_runs_lists_runs_in_start_order_and_warns_once_per_bad_record(tmp_path: Path) -> None:
    two_runs_and_a_corrupt_one(tmp_path)
    code, out, err = run("runs", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STARTED", "(UTC)", "OUTCOME", "STEPS", "CHECKPOINTS", "SIZE"]
    assert [line.split()[0] for line in lines[1:]] == ["a-earlier", "c-failed", "b-later"]
    assert lines[1].split()[1:] == ["2026-11-23", "18:15:02", "success", "1200", "1/5", "+final", "27", "B"]
    assert lines[2].split()[3:6] == ["error", "1200", "0/5"]
    assert lines[3].split()[-3:] == ["1/5", "1.5", "GB"]
    warnings = err.splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: ") and "zz-broken" in warnings[0] and "not valid JSON" in warnings[0]


def test_runs_json(tmp_path: Path) -> None:
    two_runs_and_a_corrupt_one(tmp_path)
    code, out, _ = run("runs", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == 0
    assert [r["name"] for r in data["runs"]] == ["a-earlier", "c-failed", "b-later"]
    assert data["runs"][0]["started"] == "2026-11-23T18:15:02.125Z"
    assert data["runs"][2]["size"] == 1_500_000_000 and data["runs"][2]["final_lora"] is False
    assert len(data["unreadable"]) == 1 and data["unreadable"][0]["path"].endswith(f"zz-broken/{RECORD_NAME}")


def test_runs_on_an_empty_and_a_missing_folder(tmp_path: Path) -> None:
    code, out, err = run("runs", str(tmp_path))
    assert (code, out) == (0, "") and "no runs found" in err
    code, _, err = run("runs", str(tmp_path / "nope"))
    assert code == 3 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def _run_folder(root: Path, prompts: int = 2, steps: tuple[int, ...] = (250, 500)) -> Path:
    record = make_record("ink-30img", prompts=tuple(f"prompt {i}" for i in range(prompts)))
    write_record(root, record)
    images = root / "ink-30img"
    images.mkdir()
    for step in steps:
        for i in range(prompts):
            Image.new("RGB", (32, 32), (step % 256, 20 * i, 90)).save(images / f"val_step{step:05d}_{i + 1:05d}_.png")
    return root


def test_sheet_writes_the_default_file(tmp_path: Path) -> None:
    _run_folder(tmp_path)
    code, out, err = run("sheet", str(tmp_path))
    assert code == 0, err
    assert out.strip() == str(tmp_path / SHEET_NAME)
    assert "4 validation image(s)" in err
    layout = SheetLayout(rows=2, columns=5)  # the plan's 5 checkpoint steps; 3 of them still missing
    with Image.open(tmp_path / SHEET_NAME) as sheet:
        assert sheet.size == (layout.width, layout.height)
        assert sheet.convert("RGB").getpixel((layout.cell_box(1, 1)[0] + 5, layout.cell_box(1, 1)[1] + 5)) == (
            500 % 256, 20, 90,
        )


def test_sheet_output_option_and_same_bytes(tmp_path: Path) -> None:
    _run_folder(tmp_path / "run")
    assert run("sheet", str(tmp_path / "run"), "-o", str(tmp_path / "one.png"))[0] == 0
    (tmp_path / "out").mkdir()  # -o never creates a folder (tests/test_inputs.py)
    assert run("sheet", str(tmp_path / "run"), "--output", str(tmp_path / "out" / "two.png"))[0] == 0
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "out" / "two.png").read_bytes()
    assert not (tmp_path / "run" / SHEET_NAME).exists()


def test_sheet_without_a_record_numbers_the_rows(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "val_step00100_00001_.png")
    code, _, err = run("sheet", str(tmp_path))
    assert code == 0, err
    with Image.open(tmp_path / SHEET_NAME) as sheet:
        assert sheet.size == (SheetLayout(1, 1).width, SheetLayout(1, 1).height)


def test_sheet_errors_are_one_line(tmp_path: Path) -> None:
    write_record(tmp_path / "empty", make_record())
    code, _, err = run("sheet", str(tmp_path / "empty"))
    assert code == 3 and "no validation images found" in err and err.count("\n") == 1

    code, _, err = run("sheet", str(tmp_path / "missing"))
    assert code == 3 and "not a folder" in err and err.count("\n") == 1

    bad = _run_folder(tmp_path / "bad")
    (bad / RECORD_NAME).write_text('{"schema": "lorawf.run/1"}')
    code, _, err = run("sheet", str(bad))
    assert code == 3 and "missing field" in err and str(bad / RECORD_NAME) in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 1_234_567, 5_000_000_000_000)] == [
        "0 B", "999 B", "1.0 kB", "1.2 MB", "5000.0 GB",
    ]
