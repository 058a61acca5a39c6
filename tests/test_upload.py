"""Dataset uploads against the project's test server: several files in flight, each checked without holding
up the next, the manifest last, and two uploads of the same dataset that do not trip over each other."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.events import Event, Upload
from lorawf.errors import ProtocolError
from lorawf.net.http import ComfyClient
from lorawf.net.settings import ServerSettings
from lorawf.net.upload import same_dataset_lock, upload_dataset
from lorawf.net.upload_plan import MANIFEST_NAME, dataset_files
from lorawf.training.dataset import scan_dataset

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]
SUBFOLDER = "lorawf/datasets/test-upload"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_intact_on_server(server: Any, subfolder: str = SUBFOLDER) -> None:
    """Every dataset file is on the server byte for byte, and the manifest lists exactly them."""
    folder = server.root / "input" / subfolder
    files = dataset_files(scan_dataset(DATASET))
    for f in files:
        assert sha(folder / f.name) == f.sha256, f.name
    listed = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    assert sorted(listed) == sorted(f.name for f in files)


async def upload(server: Any, tmp_path: Path, **kwargs: Any) -> tuple[list[Event], Any]:
    events: list[Event] = []
    files = dataset_files(scan_dataset(DATASET))
    async with ComfyClient(ServerSettings(server.url)) as client:
        report = await upload_dataset(client, files, SUBFOLDER, events.append, lock_dir=tmp_path / "locks",
                                      **kwargs)
    return events, report


@pytest.mark.parametrize("jobs", [1, 3])
async def test_files_go_jobs_at_a_time_and_the_manifest_after_every_check(comfy_server: Any, tmp_path: Path,
                                                                          jobs: int) -> None:
    comfy_server.control("slow_disk", seconds=0.05)  # each upload takes long enough to overlap the others
    events, report = await upload(comfy_server, tmp_path, jobs=jobs)
    assert comfy_server.state()["in_flight_max"]["/upload/image"] == jobs
    assert_intact_on_server(comfy_server)
    uploads = [e for e in events if isinstance(e, Upload)]
    assert len(report.sent) == len(uploads) == 54 and not report.skipped
    assert [e.files_done for e in uploads] == list(range(1, 55))  # one bar: counts only go up
    assert uploads[-1].bytes_done == uploads[-1].bytes_total == sum(f.stat().st_size for f in DATASET.iterdir())
    requests = comfy_server.requests()
    posts = [r for r in requests if r.method == "POST" and r.path.endswith("/upload/image")]
    checks = [r for r in requests if r.path.endswith("/view") and MANIFEST_NAME not in r.query]
    assert len(posts) == 55 and len(checks) == 54  # one size check per file, nothing more
    assert posts[-1].time >= max(r.time for r in checks)  # the manifest is the last thing written


async def test_a_second_upload_checks_sizes_in_parallel_and_sends_nothing(comfy_server: Any,
                                                                          tmp_path: Path) -> None:
    await upload(comfy_server, tmp_path)
    comfy_server.clear_requests()
    comfy_server.control("stall", route="/view", method="GET", seconds=0.2, count=100)
    events, report = await upload(comfy_server, tmp_path, jobs=4)
    assert not report.sent and len(report.skipped) == 54
    assert [e.status for e in events if isinstance(e, Upload)] == ["skipped"] * 54
    views = [r for r in comfy_server.requests() if r.path.endswith("/view")]
    assert len(views) == 55  # the manifest, then one size per file
    # 8 size checks at once: 54 stalled checks take 7 rounds of 0.2 s, not 54
    assert max(r.time for r in views) - min(r.time for r in views) < 54 * 0.2 / 2


async def test_a_file_left_short_on_the_server_fails_naming_it_and_writes_no_manifest(
        comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("slow_disk", seconds=0.0, short=True)
    with pytest.raises(ProtocolError, match=r"upload of .*ink_\d\d\.\w+ is incomplete on the server \(\d+ of \d+ "
                                            r"bytes\); run again"):
        await upload(comfy_server, tmp_path, jobs=2)
    assert not (comfy_server.root / "input" / SUBFOLDER / MANIFEST_NAME).exists()


async def test_cancelling_an_upload_stops_every_transfer_and_writes_no_manifest(comfy_server: Any,
                                                                                tmp_path: Path) -> None:
    comfy_server.control("slow_disk", seconds=0.3)
    task = asyncio.ensure_future(upload(comfy_server, tmp_path, jobs=4))
    await asyncio.sleep(0.8)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    assert comfy_server.state()["in_flight_max"]["/upload/image"] == 4
    assert not (comfy_server.root / "input" / SUBFOLDER / MANIFEST_NAME).exists()
    posts = [r for r in comfy_server.requests() if r.method == "POST" and r.path.endswith("/upload/image")]
    assert len(posts) < 54  # it stopped: the rest were never sent


async def test_the_lock_makes_a_second_uploader_wait_and_says_so(tmp_path: Path) -> None:
    told: list[str] = []
    order: list[str] = []

    async def hold(name: str, seconds: float) -> None:
        async with same_dataset_lock("http://h", "ds", tmp_path, lambda: told.append(name)):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
            order.append(f"{name} out")

    await asyncio.gather(hold("a", 0.3), hold("b", 0.0))
    assert order == ["a in", "a out", "b in", "b out"] and told == ["b"]
    async with same_dataset_lock("http://h", "other", tmp_path, lambda: told.append("c")):
        pass  # another folder: no wait
    assert told == ["b"]


# ------------------------------------------------------------------------- two lorawf run --upload at once


def start_run(server: Any, tmp: Path, out: Path, cache: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"LORAWF_POLL_INTERVAL": "0.3", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cache)})
    return subprocess.Popen([*CLI, "run", str(DATASET), "--token", "inkwash", "--server", server.url, "--upload",
                             "--download", str(out)], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("machines", ["one machine", "two machines"])
def test_two_runs_uploading_the_same_dataset_at_once_both_train(comfy_server_factory: Any, tmp_path: Path,
                                                                machines: str) -> None:
    server = comfy_server_factory(step_delay=0.0002)
    server.control("slow_disk", seconds=0.15)  # a write in progress is visible to the other run's checks
    caches = [tmp_path / "cache", tmp_path / ("cache" if machines == "one machine" else "cache2")]
    procs = [start_run(server, tmp_path, tmp_path / f"runs{i}", caches[i]) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
    (subfolder,) = {line.split("input/", 1)[1].split(" ", 1)[0] for _, err in results for line in err.splitlines()
                    if line.startswith("dataset on the server: input/")}
    assert_intact_on_server(server, subfolder)
    said = "\n".join(err for _, err in results)
    if machines == "one machine":  # the second waited for the first, then found every file there
        assert "waiting for another lorawf process uploading the same dataset" in said
        assert "(0 sent, 54 already there)" in said
