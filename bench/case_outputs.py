"""Case: a run's outputs over a shaped link. Seven 40 MB checkpoints and 42 validation images of 1 MB (the
outputs of a 3500-step run with a checkpoint every 500 steps and 6 prompts), fetched through the shaped link
(:mod:`bench.link`, 50 ms round trip, 100 Mbit/s) by lorawf's :func:`lorawf.net.download.download_outputs`,
by curl one file after another (one process, its connection reused) and by curl with 8 transfers at once,
in turn in every round; compared with the link's own limit (bytes / bandwidth).

Each lorawf sample is a fresh ``python -m bench.case_outputs probe ...`` process timing the download call
(process start excluded, as for curl's own timer); every file is checked on disk and removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from bench.case_download import make_file
from bench.harness import CaseResult, Context, MiB, run_process
from bench.net import Shape, bench_env, bench_server, require_curl, require_server_modules, shaped_link

NAME = "outputs"
TITLE = "outputs: 7 checkpoints + 42 validation images through a 50 ms RTT / 100 Mbit/s link, vs curl and the link"
SHAPE = Shape(delay_ms=25.0, mbit=100.0)


def output_files(quick: bool) -> list[tuple[str, str, int]]:
    """``(subfolder, filename, size)`` of every output: checkpoints in ``flux_lora``, images in ``validation``."""
    checkpoint, image = (4 * 1_000_000, 100_000) if quick else (40 * 1_000_000, 1_000_000)
    files = [("flux_lora", f"inkwash_rank16_bf16-step{step:05d}.safetensors", checkpoint)
             for step in (500, 1000, 1500, 2000, 2500, 3000, 3500)]
    files += [("validation", f"inkwash_validation_{i:05d}_.png", image) for i in range(42)]
    return files


def probe(url: str, spec: str, dest: str) -> None:
    """Child process: download every output with lorawf and print ``{"seconds", "bytes"}``."""
    from lorawf.comfy.events import Event, OutputFile
    from lorawf.net.download import download_outputs
    from lorawf.net.http import ComfyClient
    from lorawf.net.settings import ServerSettings

    refs = [OutputFile("1", "files", name, sub, "output") for sub, name, _ in json.loads(spec)]
    sizes: list[int] = []

    def sink(event: Event) -> None:
        size = getattr(event, "bytes", None)
        if isinstance(size, int):
            sizes.append(size)

    async def go() -> float:
        async with ComfyClient(ServerSettings(url)) as client:
            start = time.perf_counter()
            problems = await download_outputs(client, refs, Path(dest), sink, "p")
            if problems:
                raise SystemExit(f"lorawf download problems: {problems[:3]}")
            return time.perf_counter() - start

    seconds = asyncio.run(go())
    print(json.dumps({"seconds": seconds, "bytes": sum(sizes)}))


def curl_download(curl: str, url: str, files: list[tuple[str, str, int]], dest: Path, parallel: int) -> list[str]:
    cmd = [curl, "-sS", "-f"]
    if parallel > 1:
        cmd += ["--parallel", "--parallel-max", str(parallel)]
    for sub, name, _ in files:
        cmd += ["-o", str(dest / sub / name), "--create-dirs", f"{url}/view?filename={name}&subfolder={sub}&type=output"]
    return cmd


def check_arrived(dest: Path, files: list[tuple[str, str, int]]) -> None:
    for sub, name, size in files:
        found = [p for p in (dest / sub / name, dest / name) if p.is_file()]
        if not found or found[0].stat().st_size != size:
            raise RuntimeError(f"{sub}/{name} did not arrive whole")
    shutil.rmtree(dest)


def run(ctx: Context) -> CaseResult:
    require_server_modules()
    curl = require_curl()
    result = CaseResult(NAME, TITLE)
    files = output_files(ctx.quick)
    total = sum(size for _, _, size in files)
    root = ctx.workdir / "outputs_root"
    for sub, name, size in files:
        make_file(root / "output" / sub / name, size)
    samples: dict[str, list[float]] = {"curl": [], "curl x8": [], "lorawf": []}
    rounds = 2 if ctx.quick else 3
    with bench_server(root) as server, shaped_link(server, SHAPE) as url:
        for i in range(rounds):
            ctx.log(f"outputs: {total / 1e6:.0f} MB over {SHAPE.describe()}, round {i + 1}/{rounds}")
            for tool, parallel in (("curl", 1), ("curl x8", 8)):
                dest = ctx.workdir / f"outputs_{tool.replace(' ', '')}"
                got = run_process(curl_download(curl, url, files, dest, parallel), capture=True, env=bench_env())
                if got.returncode != 0:
                    raise RuntimeError(f"{tool} failed: {got.stderr.decode(errors='replace').strip()[-300:]}")
                check_arrived(dest, files)
                samples[tool].append(got.wall)
            dest = ctx.workdir / "outputs_lorawf"
            ours = run_process([sys.executable, "-m", "bench.case_outputs", "probe", url, json.dumps(files), str(dest)],
                               capture=True, env=bench_env())
            if ours.returncode != 0:
                raise RuntimeError(f"lorawf download failed: {ours.stderr.decode(errors='replace')[-400:]}")
            report = json.loads(ours.stdout.decode().strip().splitlines()[-1])
            if report["bytes"] != total:
                raise RuntimeError(f"lorawf got {report['bytes']} of {total} bytes")
            check_arrived(dest, files)
            samples["lorawf"].append(report["seconds"])
    for tool, values in samples.items():
        result.metric(f"{tool} time", "s", values)
    limit = total / SHAPE.bytes_per_second
    result.info.update({"bytes": total, "files": len(files), "link": SHAPE.describe(), "link_limit_s": limit})
    ours_t = result.metrics["lorawf time"].median
    result.target("vs_link", "lorawf throughput / link limit at 50 ms RTT", limit / ours_t, ">=", 0.9, "x")
    result.info["lorawf_over_curl1"] = ours_t / result.metrics["curl time"].median
    result.info["lorawf_over_curl8"] = ours_t / result.metrics["curl x8 time"].median
    result.info["mib_per_s"] = total / ours_t / MiB
    return result


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "probe":
    probe(sys.argv[2], sys.argv[3], sys.argv[4])
