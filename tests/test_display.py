"""The terminal displays fit the terminal: no line wraps, one upload bar, a fake clock for the rates."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path
from typing import Any

from lorawf.cli.display import LiveDisplay, UploadProgress, cells, fit
from lorawf.comfy.events import Executing, Progress, Queued, Started, Upload
from tests.terminal import run_on_terminal

REPO = Path(__file__).resolve().parent.parent
CSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def screen_lines(raw: str) -> list[str]:
    """What each written line occupies: escape sequences removed, split at newlines and carriage returns."""
    return [part for line in CSI.sub("", raw).split("\n") for part in line.split("\r")]


def test_fit_counts_terminal_columns() -> None:
    assert fit("short", 10) == "short"
    assert fit("a" * 20, 10) == "a" * 9 + "…" and cells(fit("a" * 20, 10)) == 10
    wide = "训练循环训练循环"  # two columns each
    assert cells(wide) == 16 and cells(fit(wide, 9)) <= 9
    assert cells("e\u0301") == 1  # a combining accent takes no column


def live_run(width: int, title: str = "Train Loop") -> str:
    out = io.StringIO()
    clock = Clock()
    display = LiveDisplay(out, clock=clock, min_interval=0.0, columns=lambda: width)
    pid = "a5b7be84-2f71-4591-a8d8-2565ca19e04a"
    display(Queued(pid, 3, 2))
    display(Started(pid))
    display(Executing(pid, "106", title, "FluxTrainLoop", 1, 7, 0, 1720))
    for step in range(1, 251, 10):
        clock.now += 1.0
        display(Progress(pid, "106", title, step, 250, step, 1720))
    display.close()
    return out.getvalue()


def test_the_live_display_never_wraps_in_a_narrow_terminal() -> None:
    for width in (40, 50, 80, 200):
        raw = live_run(width, title="Train Loop " + "训练" * 30)
        lines = screen_lines(raw)
        assert max(cells(line) for line in lines) <= width - 1, width
        assert "ETA" in raw
    narrow = live_run(50)
    assert "█" in narrow or "·" in narrow  # a bar still fits at 50 columns
    assert "it/s" in narrow


def test_upload_on_a_terminal_is_one_bar_then_one_summary() -> None:
    out = io.StringIO()
    clock = Clock()
    progress = UploadProgress(out, clock, tty=True, columns=lambda: 60, min_interval=0.0)
    total = 200 * 1_200_000
    for index in range(1, 201):
        clock.now += 0.05
        status = "skipped" if index <= 20 else "sent"
        done = max(0, index - 20) * 1_200_000
        progress(Upload(None, f"img_{index:03d}.png", status, index, 200, done, total - 20 * 1_200_000))
    raw = out.getvalue()
    assert raw.count("\n") == 1  # the bar is redrawn in place; only the summary ends a line
    assert "img_" not in raw and "0/0 bytes" not in raw
    summary = raw.rsplit("\r\x1b[K", 1)[-1]
    assert max(cells(line) for line in screen_lines(raw[: -len(summary)])) <= 59
    assert summary.startswith("uploaded 180 files (216.0 MB) in") and "; 20 already there" in summary
    assert "MB/s" in raw and "ETA" in raw


def test_upload_without_a_terminal_logs_every_tenth() -> None:
    out = io.StringIO()
    clock = Clock()
    progress = UploadProgress(out, clock, tty=False)
    for index in range(1, 401):
        clock.now += 0.01
        progress(Upload(None, f"img_{index:03d}.png", "sent", index, 400, index * 1000, 400 * 1000))
    lines = out.getvalue().splitlines()
    assert 9 <= len(lines) <= 12
    assert lines[-1].startswith("uploaded 400 files (400.0 KB) in")


def test_a_dataset_already_on_the_server_is_one_line() -> None:
    out = io.StringIO()
    progress = UploadProgress(out, Clock(), tty=True)
    for index in range(1, 87):
        progress(Upload(None, f"img_{index:03d}.png", "skipped", index, 86, 0, 0))
    assert CSI.sub("", out.getvalue()).strip("\r") == "dataset already on the server (86 of 86 files checked)\n"


def test_a_real_50_column_terminal(comfy_server: Any, tmp_path: Path) -> None:
    workflow = tmp_path / "wf.json"
    workflow.write_text('{"1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": 30, "delay": 0.03, '
                        '"text": "x"}}, "2": {"class_type": "AcceptSaveText", "inputs": '
                        '{"text": ["1", 0], "filename_prefix": "p"}}}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_") and k != "COLUMNS"}
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache"), "LORAWF_POLL_INTERVAL": "0.3"})
    code, screen = run_on_terminal([sys.executable, "-c", "from lorawf.cli import main; main()", "submit",
                                    str(workflow), "--server", comfy_server.url], env, tmp_path, columns=50)
    assert code == 0
    assert "step" in screen and "ETA" in screen
    lines = screen_lines(screen)
    block = [line for line in lines if line.startswith(("running ", "queued ", "▶", "  step", "  overall"))]
    assert block and max(cells(line) for line in block) <= 49, max(block, key=cells)
    # redraws replace the block: the status line is not repeated into the scrollback once per redraw
    assert sum(1 for line in lines if line.startswith("running ")) <= 2 * screen.count("\x1b[J") + 2
