"""Bad inputs a tester met, each as a user meets it: one ``error:`` line, exit 3 (bad input) or 2 (usage), and
nothing left on disk or on the server.

Real ``lorawf`` processes (and, for ``run --upload``, the project's test server); the few in-process cases
simulate what a root test run cannot produce (an unreadable folder).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lorawf.cli import main
from lorawf.fsutil import atomic_write_text
from lorawf.training.overrides import OVERRIDE_NAMES

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]


def lorawf(*args: str, tmp: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "2", "PYTHONPATH": str(REPO),
                "XDG_CACHE_HOME": str(tmp / "cache")})
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp, stdin=subprocess.DEVNULL, umask=umask)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure is one line on stderr, never a traceback or an internal error."""
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def server(comfy_server_factory: Any) -> Any:
    return comfy_server_factory(step_delay=0.0002)


def sent(server: Any) -> list[Any]:
    """Every request a command made (the test harness's own control requests left out)."""
    return [r for r in server.requests() if not r.path.startswith("/__test__")]


# ------------------------------------------------------------------------- 1. dataset checks before sending


def make_bad(dataset: Path, kind: str) -> str:
    """Spoil a copy of the example dataset in one way; returns the bad file's name."""
    if kind == "empty":
        (dataset / "blank.png").write_bytes(b"")
        return "blank.png"
    if kind == "jpeg_named_png":
        shutil.copy(dataset / "ink_01.jpg", dataset / "photo.png")
        return "photo.png"
    if kind == "text_named_webp":
        (dataset / "notes.webp").write_text("not an image")
        return "notes.webp"
    if kind == "image_link_out":
        (dataset / "passwd.png").symlink_to("/etc/passwd")
        return "passwd.png"
    assert kind == "caption_link_out"
    (dataset / "ink_00.txt").unlink()
    (dataset / "ink_00.txt").symlink_to("/etc/passwd")
    return "ink_00.txt"


BAD_DATASETS = [
    ("empty", "empty file (0 bytes); replace it with the real image or remove it"),
    ("jpeg_named_png", "named .png but it is a JPEG file, not PNG; rename it to photo.jpg"),
    ("text_named_webp", "not a WebP image"),
    ("image_link_out", "is a symlink to /etc/passwd, outside the dataset folder"),
    ("caption_link_out", "is a symlink to /etc/passwd, outside the dataset folder"),
]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(DATASET, copy)
    return copy


@pytest.mark.parametrize(("kind", "needle"), BAD_DATASETS)
def test_plan_and_patch_refuse_a_bad_dataset_file(tmp_path: Path, dataset: Path, kind: str, needle: str) -> None:
    bad = make_bad(dataset, kind)
    for args in (["plan", str(dataset)], ["patch", str(dataset), "--token", "ink", "-o", "wf.json"]):
        proc = lorawf(*args, tmp=tmp_path)
        assert proc.returncode == 3, proc.stderr
        line = one_error_line(proc)
        assert line.startswith(f"error: {dataset / bad}: ") and needle in line
    assert not (tmp_path / "wf.json").exists()


@pytest.mark.parametrize(("kind", "needle"), BAD_DATASETS)
def test_run_upload_of_a_bad_dataset_sends_nothing(server: Any, tmp_path: Path, dataset: Path, kind: str,
                                                    needle: str) -> None:
    bad = make_bad(dataset, kind)
    out = tmp_path / "runs"
    proc = lorawf("run", str(dataset), "--token", "ink", "--server", server.url, "--upload", "--download",
                  str(out), tmp=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    line = one_error_line(proc)
    assert str(dataset / bad) in line and needle in line
    assert not any(r.method == "POST" for r in sent(server))  # no upload, no prompt
    assert not out.exists()


# ------------------------------------------------ 2. an unreadable folder; --upload with --server-dataset-path


def test_an_unreadable_dataset_folder_is_exit_3_not_a_click_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as root nothing is unreadable: make both what click asks (os.access) and the listing say so
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access, real_scandir = os.access, os.scandir

    def no_access(path: Any, mode: int, **kwargs: Any) -> bool:
        return False if Path(str(path)) == locked else real_access(path, mode, **kwargs)

    def no_listing(path: Any) -> Any:
        if Path(str(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "access", no_access)
    monkeypatch.setattr(os, "scandir", no_listing)
    for args in (["plan", str(locked)], ["patch", str(locked), "--token", "ink"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 3, result.stderr
        assert result.stderr == (f"error: {locked}: dataset folder is not readable (permission denied) "
                                 f"(fix its permissions, e.g. chmod u+rx {locked})\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder")
def test_an_unreadable_dataset_folder_in_a_real_process(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        proc = lorawf("plan", str(locked), tmp=tmp_path)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 3 and "dataset folder is not readable" in one_error_line(proc)


def test_run_with_upload_and_server_dataset_path_is_a_usage_error(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = lorawf("run", str(DATASET), "--token", "ink", "--server", server.url, "--upload",
                  "--server-dataset-path", "/srv/data/ink", "--download", str(out), tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc)
    assert "--upload and --server-dataset-path '/srv/data/ink'" in line and "not both" in line
    assert sent(server) == [] and not out.exists()


# ------------------------------------------------------------------------- 3. files like every other tool's


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_output_file_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    proc = lorawf("patch", "--images", "43", "--token", "ink", "-o", "wf.json", "--emit-patch", "p.json",
                  tmp=tmp_path, umask=umask)
    assert proc.returncode == 0, proc.stderr
    for name in ("wf.json", "p.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "wf.json"
    target.write_text("old")
    target.chmod(0o640)
    assert lorawf("patch", "--images", "43", "--token", "ink", "-o", "wf.json", tmp=tmp_path).returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() != "old"


def test_writing_onto_a_symlink_writes_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "wf.json"
    real.write_text("old")
    real.chmod(0o604)
    (tmp_path / "link.json").symlink_to("real/wf.json")
    assert lorawf("patch", "--images", "43", "--token", "ink", "-o", "link.json", tmp=tmp_path).returncode == 0
    assert (tmp_path / "link.json").is_symlink()
    assert real.read_text().startswith("{") and stat.S_IMODE(real.stat().st_mode) == 0o604
    assert listing(tmp_path / "real") == ["wf.json"]  # no temp file left beside it


def test_patch_onto_a_folder_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "outdir").mkdir()
    proc = lorawf("patch", "--images", "43", "--token", "ink", "--emit-patch", "p.json", "-o", "outdir",
                  tmp=tmp_path)
    assert proc.returncode == 3
    assert one_error_line(proc) == "error: outdir: is a folder, not a file (give the name of the file to write)"
    assert listing(tmp_path / "outdir") == [] and not (tmp_path / "p.json").exists()


def test_an_empty_output_name_is_a_usage_error(tmp_path: Path) -> None:
    proc = lorawf("patch", "--images", "43", "--token", "ink", "-o", "", tmp=tmp_path)
    assert proc.returncode == 2
    assert "-o '': the output file name is empty" in one_error_line(proc)
    assert listing(tmp_path) == []


def test_sheet_into_a_missing_folder_does_not_create_it(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from tests.test_sheet import write_images

    write_images(tmp_path / "run" / "validation")
    target = tmp_path / "nonexistent" / "x.png"
    proc = lorawf("sheet", str(tmp_path / "run"), "-o", str(target), tmp=tmp_path)
    assert proc.returncode == 3
    assert one_error_line(proc) == (f"error: {target}: cannot write here: No such file or directory "
                                    "(check that the folder exists and is writable)")
    assert not target.parent.exists()


def test_the_contact_sheet_follows_the_umask(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from tests.test_sheet import write_images

    write_images(tmp_path / "run" / "validation")
    assert lorawf("sheet", str(tmp_path / "run"), tmp=tmp_path).returncode == 0
    assert stat.S_IMODE((tmp_path / "run" / "contact_sheet.png").stat().st_mode) == 0o644


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    # like `-o /dev/null` or `-o /dev/stdout`: renaming over a device or pipe would destroy it
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.lstat().st_mode)
    assert listing(tmp_path) == ["pipe"]


# ------------------------------------------------------------------------- 4. errors name the flags that exist


BAD_VALUES = {"dim": "0", "alpha": "-1", "lr": "-1", "steps": "0", "steps_per_image": "0", "interval": "0",
              "batch": "0", "repeats": "0"}


@pytest.mark.parametrize("spec", OVERRIDE_NAMES, ids=lambda o: o.flag)
def test_an_override_error_names_the_flag_the_user_typed(spec: Any) -> None:
    result = CliRunner().invoke(main, ["plan", "--images", "43", spec.flag, BAD_VALUES[spec.name]])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: {spec.flag} {BAD_VALUES[spec.name]}"), result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--steps", "1000", "--steps-per-image", "40"], "--steps and --steps-per-image both set the step count"),
    (["--steps", "5000", "--interval", "5"], "--interval 5 with 5000 steps would write 1000 checkpoints"),
])
def test_combination_errors_name_the_real_flags(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["plan", "--images", "43", *args])
    assert result.exit_code == 3 and needle in result.stderr


def test_steps_per_image_help_says_the_total_is_clamped() -> None:
    result = CliRunner().invoke(main, ["plan", "--help"])
    text = " ".join(result.output.split())
    assert "Steps per image (default 40); the total (images x this) is then clamped to 500..3500." in text


# ------------------------------------------------------------------------------ 5. regen presets are checked


PRESET = '[[preset]]\nname = "x"\noutput = "o.json"\ntoken = "ink"\nimages = 43\n'


@pytest.mark.parametrize(("text", "expected"), [
    (PRESET.replace("images = 43", 'images = "abc"'),
     'preset x: images = "abc": expected a whole number of training images'),
    (PRESET.replace("images = 43", "images = true"), "preset x: images = true: expected a whole number"),
    (PRESET.replace("images = 43", "images = 0"), "preset x: images = 0: expected at least 1 image"),
    (PRESET + 'dim = "abc"\n', 'preset x: dim = "abc": expected a whole number'),
    (PRESET + "steps = 1e3\n", "preset x: steps = 1000.0: expected a whole number (write 1000)"),
    (PRESET + "lr = true\n", "preset x: lr = true: expected a number"),
    (PRESET + "lr = nan\n", "preset x: lr nan: expected a finite number"),
    (PRESET + "dim = 0\n", "preset x: dim 0 is out of range: FluxTrainer accepts 1..100000"),
    (PRESET + "steps = 900\nsteps_per_image = 40.0\n", "preset x: steps and steps_per_image both set"),
    (PRESET + 'set = "106.steps=12"\n', 'preset x: set = "106.steps=12": expected a list of'),
    (PRESET + "set = [1]\n", "preset x: set = [1]: expected a list of"),
    (PRESET.replace('token = "ink"', "token = 5"), "preset x: token = 5: expected a string"),
    (PRESET.replace('output = "o.json"', 'output = ""'), 'preset x: output = "": expected a non-empty string'),
    (PRESET.replace('name = "x"', "name = 7"), "preset #1: name = 7: expected a non-empty string"),
    ('preset = ["x"]\n', 'preset = ["x"]: expected [[preset]] tables'),
    ("preset = 5\n", "preset = 5: expected [[preset]] tables"),
    ("defaults = 5\n" + PRESET, "defaults = 5: expected a [defaults] table"),
    ("[defaults]\ndim = true\n" + PRESET, "[defaults]: dim = true: expected a whole number"),
    ("colour = 1\n" + PRESET, "unknown top-level key(s) colour"),
])
def test_a_bad_preset_is_one_line_naming_the_file_preset_and_key(tmp_path: Path, text: str,
                                                                  expected: str) -> None:
    presets = tmp_path / "p.toml"
    presets.write_text(text)
    proc = lorawf("regen", "--presets", str(presets), tmp=tmp_path)
    assert proc.returncode == 3, proc.stderr
    line = one_error_line(proc)
    assert line.startswith(f"error: {presets}: ") and expected in line, line
    assert listing(tmp_path) == ["p.toml"]
