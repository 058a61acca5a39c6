"""The sweep's display (lorawf.cli.sweep_display): NDJSON tagging, the live block, plain lines; a fake clock."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

from lorawf.cli.display import cells
from lorawf.cli.sweep_display import SweepConsole
from lorawf.comfy.events import Done, Notice, Progress, Queued, Started
from lorawf.runs.sweep_events import HostChange, Placed, RunDone, SweepDone
from lorawf.secrets import Secrets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(console: SweepConsole, clock: Clock) -> None:
    console.expect({"ink-lr1e-4": 600, "ink-lr4e-4": 600, "charcoal-lr1e-4": 520})
    console(HostChange(None, "gpu1", "up", "gpu1 (http://gpu1:8188): ComfyUI 0.3.64"), host="gpu1")
    for run, host in (("ink-lr1e-4", "gpu1"), ("ink-lr4e-4", "gpu2")):
        console(Placed(None, run, host), run=run, host=host)
        console(Queued("p-" + run, number=1), run=run, host=host)
        console(Started("p-" + run), run=run, host=host)
    for step in range(0, 301, 50):
        clock.now = step / 10
        console(Progress("p-ink-lr1e-4", "7", "train", step % 100, 100, step, 600), run="ink-lr1e-4", host="gpu1")
        console(Progress("p-ink-lr4e-4", "7", "train", step % 100, 100, step // 2, 600), run="ink-lr4e-4",
                host="gpu2")


def test_json_lines_carry_run_and_host_and_end_with_the_sweeps_done() -> None:
    out = io.StringIO()
    clock = Clock()
    console = SweepConsole(out, json_mode=True, secrets=Secrets.of(["s3cret-token"]), clock=clock,
                           wall=lambda: datetime(2026, 12, 2, tzinfo=timezone.utc))
    feed(console, clock)
    console(Notice(None, "using s3cret-token"), run="ink-lr1e-4", host="gpu1")
    console(SweepDone(None, "success", 0, "3 of 3 runs succeeded", {"success": 3}))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all("run" in e and "host" in e and e["time"] == "2026-12-02T00:00:00.000Z" for e in lines)
    progress = [e for e in lines if e["event"] == "progress"]
    assert progress[0]["run"] == "ink-lr1e-4" and progress[0]["host"] == "gpu1"
    assert lines[-1]["event"] == "done" and lines[-1]["run"] is None and lines[-1]["runs"] == {"success": 3}
    assert "s3cret-token" not in out.getvalue()


def test_the_live_block_has_a_line_per_active_run_and_an_overall_line_that_fit() -> None:
    out = io.StringIO()
    clock = Clock()
    console = SweepConsole(out, live=True, clock=clock, columns=lambda: 60, min_interval=0)
    feed(console, clock)
    block = console.block(59)
    assert len(block) == 3 and all(cells(line) <= 59 for line in block)
    assert block[0].startswith("ink-lr1e-4 @ gpu1") and "300/600" in block[0] and "ETA 00:30" in block[0]
    assert "150/600" in block[1]
    assert "runs 0/3 done" in block[2] and "steps 450/1720" in block[2]
    console(RunDone.of(Done("p-ink-lr1e-4", "success", 0, "done"), "ink-lr1e-4", "gpu1"), run="ink-lr1e-4",
            host="gpu1")
    block = console.block(200)
    assert len(block) == 2 and "runs 1/3 done" in block[1] and "steps 750/1720" in block[1]
    narrow = console.block(24)
    assert all(cells(line) <= 24 for line in narrow)


def test_plain_lines_name_the_run_and_host_and_skip_progress() -> None:
    out = io.StringIO()
    clock = Clock()
    console = SweepConsole(out, live=False, clock=clock)
    feed(console, clock)
    console(RunDone.of(Done("p", "failed", 1, "node 7 failed"), "ink-lr4e-4", "gpu2"), run="ink-lr4e-4",
            host="gpu2")
    text = out.getvalue()
    assert "[ink-lr1e-4 @ gpu1] placed on gpu1" in text
    assert "[ink-lr4e-4 @ gpu2] ✘ failed: node 7 failed" in text
    assert "host gpu1 up" in text
    assert "step" not in text.replace("steps", "")  # no progress lines in a log
    assert "\x1b[" not in text
