"""Case: dataset upload. Two datasets (43 images of 1.2 MB and 170 of 3 MB, each with a caption file) sent to
the bench server's ``POST /upload/image`` by lorawf's :func:`lorawf.net.upload.upload_dataset`, by curl one
file after another (one connection, reused) and by curl with 8 transfers at once (``--parallel-max 8``), in
turn in every round: through the shaped link (:mod:`bench.link`, 50 ms round trip, 100 Mbit/s) and on loopback.

Each lorawf sample is a fresh ``python -m bench.case_upload probe ...`` process timing the upload call: reading
the manifest, sending, checking every file's size on the server, writing the manifest (process start excluded,
as for curl's own timer). Every tool uploads into a folder of its own, which is checked file by file (sizes)
on the server's disk and removed afterwards. The images are PNGs of random pixels (as incompressible as
photographs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.case_download import peak_rss_self
from bench.harness import CaseResult, Context, MiB, run_process
from bench.net import Shape, bench_env, bench_server, require_curl, require_server_modules, shaped_link

NAME = "upload"
TITLE = "upload: a dataset through a 50 ms RTT / 100 Mbit/s link and on loopback, vs curl (1 and 8 at once)"
SHAPE = Shape(delay_ms=25.0, mbit=100.0)
CAPTION = b"inkwash, a misty mountain valley, loose brush strokes, ink wash painting\n"


def make_dataset(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` PNG images of about ``size`` bytes of random pixels, each with a caption; returns every file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    side = int((size / 3) ** 0.5)
    files = []
    for i in range(count):
        image, caption = folder / f"img_{i:03d}.png", folder / f"img_{i:03d}.txt"
        if not image.exists():
            pixels = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
            pixels.save(image, compress_level=0)  # stored: as big as the pixels, made fast
            caption.write_bytes(CAPTION)
        files += [image, caption]
    return files


def probe(url: str, dataset: str, subfolder: str, jobs: str) -> None:
    """Child process: upload the dataset with lorawf and print ``{"seconds", "bytes", "vm_hwm"}``."""
    from lorawf.net.http import ComfyClient
    from lorawf.net.settings import ServerSettings
    from lorawf.net.upload import upload_dataset
    from lorawf.net.upload_plan import dataset_files
    from lorawf.training.dataset import scan_dataset

    files = dataset_files(scan_dataset(Path(dataset)))  # hashing is not timed: it is done before the run

    async def go() -> tuple[float, int]:
        async with ComfyClient(ServerSettings(url)) as client:
            start = time.perf_counter()
            report = await upload_dataset(client, files, subfolder, jobs=int(jobs))
            return time.perf_counter() - start, report.bytes_sent

    seconds, sent = asyncio.run(go())
    print(json.dumps({"seconds": seconds, "bytes": sent, "vm_hwm": peak_rss_self()}))


def curl_upload(curl: str, url: str, files: list[Path], subfolder: str, parallel: int) -> list[str]:
    """One curl command that posts every file like lorawf does (``overwrite``, ``subfolder``)."""
    cmd = [curl, "-sS"]
    if parallel > 1:
        cmd += ["--parallel", "--parallel-max", str(parallel)]
    for i, path in enumerate(files):
        if i:
            cmd.append("--next")
        cmd += ["-f", "-o", "/dev/null", "-F", f"image=@{path}", "-F", f"subfolder={subfolder}",
                "-F", "overwrite=true", "-F", "type=input", f"{url}/upload/image"]
    return cmd


def check_arrived(server_input: Path, subfolder: str, files: list[Path]) -> None:
    """Every file is on the server's disk with its size; then the folder is removed (disk space)."""
    folder = server_input / subfolder
    for path in files:
        there = folder / path.name
        if not there.is_file() or there.stat().st_size != path.stat().st_size:
            raise RuntimeError(f"{subfolder}: {path.name} did not arrive whole")
    shutil.rmtree(folder)


def run(ctx: Context) -> CaseResult:
    require_server_modules()
    curl = require_curl()
    result = CaseResult(NAME, TITLE)
    sets = [("43x1.2MB", 43, 1_200_000), ("170x3MB", 170, 3_000_000)]
    if ctx.quick:
        sets = [("12x1.2MB", 12, 1_200_000), ("24x3MB", 24, 3_000_000)]
    root = ctx.workdir / "upload_root"
    seconds: dict[str, list[float]] = {}
    rss: list[float] = []
    with bench_server(root) as server, shaped_link(server, SHAPE) as shaped_url:
        links = [("50ms", shaped_url), ("loopback", server.url)]
        for label, count, size in sets:
            dataset = ctx.workdir / "upload_sets" / label
            files = make_dataset(dataset, count, size)
            total = sum(p.stat().st_size for p in files)
            result.info[f"{label}_bytes"] = total
            for link, url in links:
                big = link == "50ms" and count > 100
                rounds = 2 if ctx.quick or big else max(3, ctx.repeat // 2)
                for i in range(rounds):
                    ctx.log(f"upload {label} over {link}: round {i + 1}/{rounds}")
                    tag = f"r{i}-{time.monotonic_ns()}"
                    for tool, parallel in (("curl", 1), ("curl x8", 8)):
                        sub = f"bench/{tool.replace(' ', '')}-{tag}"
                        got = run_process(curl_upload(curl, url, files, sub, parallel), capture=True, env=bench_env())
                        if got.returncode != 0:
                            raise RuntimeError(f"{tool} failed: {got.stderr.decode(errors='replace').strip()[-300:]}")
                        check_arrived(root / "input", sub, files)
                        seconds.setdefault(f"{label} {link} {tool}", []).append(got.wall)
                    sub = f"bench/lorawf-{tag}"
                    ours = run_process([sys.executable, "-m", "bench.case_upload", "probe", url, str(dataset), sub,
                                        "8"], capture=True, env=bench_env())
                    if ours.returncode != 0:
                        raise RuntimeError(f"lorawf upload failed: {ours.stderr.decode(errors='replace')[-400:]}")
                    report = json.loads(ours.stdout.decode().strip().splitlines()[-1])
                    if report["bytes"] != total:
                        raise RuntimeError(f"lorawf sent {report['bytes']} of {total} bytes")
                    check_arrived(root / "input", sub, files)
                    seconds.setdefault(f"{label} {link} lorawf", []).append(report["seconds"])
                    rss.append(report["vm_hwm"])
    for name, samples in seconds.items():
        result.metric(f"{name} time", "s", samples)
    result.metric("lorawf upload process peak RSS", "B", rss, "VmHWM of a probe process, the biggest set included")
    result.info["link"] = SHAPE.describe()
    for label, _, _ in sets:
        med = {tool: result.metrics[f"{label} 50ms {tool} time"].median for tool in ("curl", "curl x8", "lorawf")}
        result.target(f"{label}_vs_curl8", f"{label} at 50 ms RTT: lorawf / curl x8 time", med["lorawf"] / med["curl x8"],
                      "<=", 1.2, "x")
        result.info[f"{label}_50ms_lorawf_over_curl1"] = med["lorawf"] / med["curl"]
        loop = {t: result.metrics[f"{label} loopback {t} time"].median for t in ("curl x8", "lorawf")}
        result.info[f"{label}_loopback_lorawf_over_curl8"] = loop["lorawf"] / loop["curl x8"]
    label = sets[-1][0]
    rate = result.info[f"{label}_bytes"] / result.metrics[f"{label} 50ms lorawf time"].median
    result.target("bandwidth_bound", f"{label} at 50 ms RTT: lorawf throughput / link limit",
                  rate / SHAPE.bytes_per_second, ">=", 0.9, "x")
    result.target("peak_rss", "peak RSS of the upload process", max(rss), "<=", 96 * MiB, "B")
    return result


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "probe":
    probe(*sys.argv[2:6])
