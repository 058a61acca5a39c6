"""What a user sees from `lorawf plan`, `patch` and `regen`: output, files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorawf.cli import main
from lorawf.comfy.schema import bundled_schemas
from lorawf.comfy.validate import validate_prompt
from lorawf.fsutil import atomic_write_text

ROOT = Path(__file__).parent.parent
DATASET = ROOT / "fixtures" / "datasets" / "ink_wash"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_plan_43_images() -> None:
    code, out, _ = run("plan", "--images", "43")
    assert code == 0
    assert "1720" in out and "250 steps (7 checkpoints)" in out


def test_plan_json_is_one_object() -> None:
    code, out, _ = run("plan", "--images", "100", "--dim", "32", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["max_train_steps"], data["checkpoint_interval"], data["network_dim"]) == (3500, 500, 32)
    assert data["checkpoint_steps"][-1] == 3500 and sum(data["loop_steps"]) == 3500
    assert data["advice"][0]["code"] == "style_dilution"


def test_plan_scans_a_dataset_folder() -> None:
    code, out, _ = run("plan", str(DATASET))
    assert code == 0 and "30 images" in out and "1200" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["plan"], 2, "give a DATASET folder or --images N"),
        (["plan", "--images", "0"], 3, "0 training images"),
        (["plan", "--images", "43", "--lr", "-1"], 3, "--lr -1 is out of range"),
        (["plan", "--images", "43", "--dim", "0"], 3, "--dim 0 is out of range"),
        (["plan", "/definitely/not/here"], 3, "does not exist"),
        (["plan", "--images", "abc"], 2, "abc"),
        (["patch", "--images", "43"], 2, "--token"),
        (["patch", "--images", "43", "--token", "a|b"], 3, "'|'"),
        (["patch", "--images", "43", "--token", "ink", "--set", "106.steps=0"], 3, "out of range"),
        (["patch", "--images", "43", "--token", "ink", "--template", "/nope.json"], 3, "file not found"),
    ],
)
def test_errors_are_one_line_with_the_right_exit_code(args: list[str], code: int, message: str) -> None:
    got, _out, err = run(*args)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_patch_writes_a_valid_workflow_and_the_patch(tmp_path: Path) -> None:
    out, patch = tmp_path / "wf.json", tmp_path / "wf.patch.json"
    code, _, err = run("patch", str(DATASET), "--token", "inkwash", "-o", str(out), "--emit-patch", str(patch))
    assert code == 0, err
    wf = json.loads(out.read_text())
    assert validate_prompt(wf, bundled_schemas()).ok
    add = next(n for n in wf.values() if n["class_type"] == "TrainDatasetAdd")
    assert add["inputs"]["dataset_path"] == str(DATASET.resolve())
    ops = json.loads(patch.read_text())
    assert any(op["path"] == "/105/inputs/max_train_steps" and op["value"] == 1200 for op in ops)
    assert "30 images" in err and "checkpoints at 250, 500, 750, 1000, 1200" in err


def test_patch_to_stdout_is_byte_identical_across_runs() -> None:
    first = run("patch", "--images", "43", "--token", "ink", "-o", "-")
    second = run("patch", "--images", "43", "--token", "ink")
    assert first[0] == 0 and first[1] == second[1]
    assert first[1].endswith("}\n")


def test_bad_template_is_refused_without_touching_the_output(tmp_path: Path) -> None:
    out = tmp_path / "wf.json"
    out.write_text("precious")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    code, _, err = run("patch", "--images", "43", "--token", "ink", "--template", str(bad), "-o", str(out))
    assert code == 3 and "not valid JSON (line 1" in err
    assert out.read_text() == "precious"


def test_ui_format_template_is_converted_then_checked_by_role() -> None:
    upstream = ROOT / "fixtures" / "upstream-workflows" / "flux_lora_train_example01.json"
    code, _, err = run("patch", "--images", "43", "--token", "ink", "--template", str(upstream))
    # converted from UI format, then refused for what it lacks: a STYLE_TOKEN prompt node lorawf can patch
    assert code == 3
    assert "StringConstantMultiline" in err and "STYLE_TOKEN" in err and "Traceback" not in err


def write_presets(tmp_path: Path, images: int = 43) -> Path:
    presets = tmp_path / "presets.toml"
    presets.write_text(
        f'[[preset]]\nname = "a"\noutput = "out/a.json"\ntoken = "ink"\nimages = {images}\n'
        '[[preset]]\nname = "b"\noutput = "out/b.json"\ntoken = "ink"\nimages = 15\ndim = 32\n'
    )
    return presets


def test_regen_writes_then_check_passes_then_fails_on_drift(tmp_path: Path) -> None:
    presets = write_presets(tmp_path)
    code, _, _ = run("regen", "--presets", str(presets), "--check")
    assert code == 1  # files missing
    code, out, _ = run("regen", "--presets", str(presets))
    assert code == 0 and "wrote" in out
    a = tmp_path / "out" / "a.json"
    before = a.read_bytes()
    assert run("regen", "--presets", str(presets), "--check")[0] == 0
    write_presets(tmp_path, images=60)  # the preset changed: the committed file is now stale
    code, out, err = run("regen", "--presets", str(presets), "--check")
    assert code == 1
    assert f"out of date: {a}" in out and "max_train_steps" in out  # names the file, shows a short diff
    assert "b.json" not in out
    assert "1 workflow file(s) out of date" in err
    assert a.read_bytes() == before  # --check writes nothing


def test_regen_reports_bad_presets(tmp_path: Path) -> None:
    presets = tmp_path / "p.toml"
    presets.write_text('[[preset]]\nname = "x"\noutput = "o.json"\ntoken = "ink"\nimages = 43\ncolour = 1\n')
    code, _, err = run("regen", "--presets", str(presets))
    assert code == 3 and "preset x: unknown key(s) colour" in err
    presets.write_text('[[preset]]\nname = "x"\noutput = "o.json"\ntoken = "ink"\nimages = 43\ndim = 0\n')
    code, _, err = run("regen", "--presets", str(presets))
    assert code == 3 and "preset x:" in err and "out of range" in err
    assert not (tmp_path / "o.json").exists()


def test_committed_workflows_are_up_to_date() -> None:
    code, out, err = run("regen", "--presets", str(ROOT / "workflows" / "presets.toml"), "--check")
    assert code == 0, out + err


def test_atomic_write_never_leaves_a_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "wf.json"
    target.write_text("old")

    def boom(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["wf.json"]  # no temp file left behind


def test_plan_and_help_do_not_import_network_libraries() -> None:
    for args in (["plan", "--images", "43"], ["--help"]):
        code = (
            "import sys\n"
            "from lorawf.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('httpx', 'websockets', 'aiohttp', 'jsonpatch') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert "HEAVY []" in proc.stderr, proc.stderr


def test_console_script_exit_code_in_a_real_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "lorawf", "plan", "--images", "0"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 3
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_an_unwritable_output_is_one_line_and_exit_3(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "wf.json"
    code, _, err = run("patch", "--images", "43", "--token", "ink", "-o", str(target))
    assert code == 3 and "Traceback" not in err
    assert f"error: {target}: cannot write here" in err


def test_an_unexpected_failure_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import lorawf.training.plan

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(lorawf.training.plan, "plan_training", broken)
    monkeypatch.delenv("LORAWF_DEBUG", raising=False)
    code, _, err = run("plan", "--images", "43")
    assert code == 1
    assert err.strip() == ("error: internal error (RuntimeError: boom); rerun with LORAWF_DEBUG=1 for the "
                           "traceback and please report it")
