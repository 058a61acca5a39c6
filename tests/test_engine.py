"""The engine as a library: a reporter receives every event, the engine prints nothing, one loop per call."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.events import Done, Download, Event, Notice, Output, Queued, Upload
from lorawf.errors import PromptRejected, RunFailed
from lorawf.net.settings import ServerSettings
from lorawf.runs import engine, pipeline
from lorawf.training.plan import plan_training

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"


class Collected(list[Event]):
    """A reporter: the list of events it received."""

    def __call__(self, event: Event, /) -> None:
        self.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self]


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAWF_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for key in [k for k in os.environ if k in ("LORAWF_TOKEN", "LORAWF_SERVER")]:
        monkeypatch.delenv(key)


def graph(steps: int = 2, *, fail: bool = False) -> dict[str, Any]:
    g: dict[str, Any] = {
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": steps, "delay": 0.01, "text": "hello"}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "accept"}},
    }
    if fail:
        g["3"] = {"class_type": "AcceptFail", "inputs": {"message": "boom", "text": ["1", 0]}}
        g["2"]["inputs"]["text"] = ["3", 0]
    return g


def test_submit_reports_to_the_reporter_and_prints_nothing(comfy_server: Any, tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    events = Collected()
    options = engine.FollowOptions(download=tmp_path / "out")
    result = asyncio.run(engine.submit(ServerSettings(comfy_server.url), graph(), events, options))
    assert result.outcome == "success"
    assert isinstance(events[0], Queued) and isinstance(events[-1], Done)
    assert events[-1].exit_code == 0 and events[-1].prompt_id == result.prompt_id
    downloads = [e for e in events if isinstance(e, Download)]
    assert downloads and all(Path(d.path).is_file() for d in downloads)
    assert capfd.readouterr() == ("", "")


def test_a_failed_run_ends_with_done_then_raises(comfy_server: Any) -> None:
    events = Collected()
    with pytest.raises(RunFailed):
        asyncio.run(engine.submit(ServerSettings(comfy_server.url), graph(fail=True), events))
    done = events[-1]
    assert isinstance(done, Done) and (done.outcome, done.exit_code) == ("failed", 1)
    assert "boom" in done.message


def test_a_rejected_prompt_reports_the_error_and_done(comfy_server: Any) -> None:
    events = Collected()
    bad = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(PromptRejected):
        asyncio.run(engine.submit(ServerSettings(comfy_server.url), bad, events))
    assert events.kinds()[-2:] == ["error", "done"]
    assert isinstance(events[-1], Done) and (events[-1].outcome, events[-1].exit_code) == ("rejected", 4)


def test_run_pipeline_reports_notices_uploads_and_outputs(comfy_server_factory: Any, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    server = comfy_server_factory(step_delay=0.0002)
    events = Collected()
    request = pipeline.RunRequest(token="inkwash", dataset=DATASET, upload=True, download_root=tmp_path / "runs",
                                  download_as_you_go=True)
    run_dir = asyncio.run(pipeline.run(ServerSettings(server.url), request, events))
    assert capfd.readouterr() == ("", "")  # the engine never prints
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices[0] == f"30 images in {DATASET} (24 with captions, 6 without)"
    assert any(n.startswith("plan: ") for n in notices)
    uploads = [e for e in events if isinstance(e, Upload)]
    assert uploads[-1].files_done == uploads[-1].files_total == 30 + 24
    checkpoints = [e for e in events if isinstance(e, Output) and e.role == "checkpoint"]
    assert len(checkpoints) >= len(plan_training(30).checkpoint_steps)
    assert isinstance(events[-1], Done) and events[-1].outcome == "success"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "success"
    saved = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert len(saved) == len(plan_training(30).checkpoint_steps) + 1
