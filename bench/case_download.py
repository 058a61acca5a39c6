"""Case 5: download. One large output file (1 GiB; 64 MiB with ``--quick``) streamed from the test server's
``/view`` by lorawf's :func:`lorawf.net.download.download_file`, against curl on the same loopback, and the peak
memory of a process that does only that download.

Each lorawf sample is a fresh ``python -m bench.case_download probe ...`` process: its own timer around the
download call (process start excluded, as curl's ``%{time_total}`` excludes curl's) and its peak RSS
(``VmHWM``, which the probe reads itself). lorawf fsyncs the finished file before renaming it into place; curl does not, so curl is also
reported with an fsync of its file added (``curl + fsync``). The throughput target compares with plain curl.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from bench.harness import CaseResult, Context, MiB, run_process
from bench.net import bench_env, bench_server, require_curl, require_server_modules

NAME = "download"
TITLE = "download: lorawf download_file vs curl on loopback; peak memory"
FILENAME = "bench_big.safetensors"


def make_file(path: Path, size: int) -> None:
    """A ``size``-byte file of non-repeating data (written once; the page cache then serves both clients)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size == size:
        return
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(size // MiB))
        fh.write(block[: size % MiB])


def fsync_file(path: Path) -> float:
    """Seconds to fsync ``path`` (what lorawf does before placing a download)."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def probe(url: str, filename: str, dest: str) -> None:
    """Child process: download one file with lorawf's client and print ``{"seconds", "bytes"}``."""
    from lorawf.comfy.events import OutputFile
    from lorawf.net.download import download_file
    from lorawf.net.http import ComfyClient
    from lorawf.net.settings import ServerSettings

    async def go() -> tuple[float, int]:
        async with ComfyClient(ServerSettings(url)) as client:
            start = time.perf_counter()
            event = await download_file(client, OutputFile("1", "files", filename, "", "output"), Path(dest), "p")
            return time.perf_counter() - start, event.bytes

    seconds, size = asyncio.run(go())
    print(json.dumps({"seconds": seconds, "bytes": size, "vm_hwm": peak_rss_self()}))


def peak_rss_self() -> int:
    """Peak RSS of this process image (``VmHWM``). Not ``ru_maxrss``: Linux carries the parent's high-water
    mark across a vfork+exec into the child's ``ru_maxrss``, so a big benchmark process would inflate it."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run(ctx: Context) -> CaseResult:
    """Interleave curl, lorawf and an fsync'd curl over the same file."""
    require_server_modules()
    curl = require_curl()
    result = CaseResult(NAME, TITLE)
    size = 64 * MiB if ctx.quick else 1024 * MiB
    rounds = max(3, ctx.repeat) if not ctx.quick else 3
    root = ctx.workdir / "download_root"
    make_file(root / "output" / FILENAME, size)
    dest = ctx.workdir / "download_dest"
    dest.mkdir(exist_ok=True)
    samples: dict[str, list[float]] = {"curl": [], "curl+fsync": [], "lorawf": [], "rss": []}
    with bench_server(root) as server:
        url = f"{server.url}/view?filename={FILENAME}&subfolder=&type=output"
        curl_out = dest / "curl.bin"
        curl_cmd = [curl, "-sS", "-f", "-o", str(curl_out), "-w", "%{time_total} %{size_download}", url]
        probe_cmd = [sys.executable, "-m", "bench.case_download", "probe", server.url, FILENAME, str(dest)]
        for i in range(rounds + 1):  # round 0 warms the page cache and the imports
            ctx.log(f"download: {size // MiB} MiB, round {i}/{rounds}")
            got = run_process(curl_cmd, capture=True, env=bench_env())
            if got.returncode != 0:
                raise RuntimeError(f"curl failed: {got.stderr.decode(errors='replace').strip()}")
            seconds, nbytes = got.stdout.decode().split()
            if int(float(nbytes)) != size:
                raise RuntimeError(f"curl got {nbytes} of {size} bytes")
            sync = fsync_file(curl_out)
            curl_out.unlink()
            ours = run_process(probe_cmd, capture=True, env=bench_env())
            if ours.returncode != 0:
                raise RuntimeError(f"lorawf download failed: {ours.stderr.decode(errors='replace').strip()[-400:]}")
            report = json.loads(ours.stdout.decode().strip().splitlines()[-1])
            if report["bytes"] != size:
                raise RuntimeError(f"lorawf got {report['bytes']} of {size} bytes")
            for leftover in dest.rglob("*"):
                if leftover.is_file():
                    leftover.unlink()
            if i == 0:
                continue
            samples["curl"].append(size / float(seconds))
            samples["curl+fsync"].append(size / (float(seconds) + sync))
            samples["lorawf"].append(size / report["seconds"])
            samples["rss"].append(report["vm_hwm"])
    curl_m = result.metric("curl throughput", "B/s", samples["curl"])
    result.metric("curl + fsync throughput", "B/s", samples["curl+fsync"])
    ours_m = result.metric("lorawf download_file throughput", "B/s", samples["lorawf"])
    rss = result.metric("lorawf download process peak RSS", "B", samples["rss"],
                        "VmHWM of a process that imports the client and downloads the file")
    result.info["file_bytes"] = size
    result.target("throughput_vs_curl", "lorawf / curl throughput", ours_m.median / curl_m.median, ">=", 0.9, "x")
    result.target("peak_rss", f"peak RSS downloading {size // MiB} MiB", rss.maximum, "<=", 64 * MiB, "B")
    return result


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "probe":
    probe(sys.argv[2], sys.argv[3], sys.argv[4])
