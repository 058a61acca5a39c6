"""Case 7: sweep. ``lorawf sweep`` of 8 runs (2 datasets x 2 lr x 2 dim) over three test servers: a fast and a
slow FluxTrainer host and one without FluxTrainer's nodes.

Both figures come from the servers' own execution timestamps (each run's ``run.json`` timings are the
server's ``execution_start``/``execution_success``):

* makespan: from the first run's start to the last run's end, against the ideal schedule for the measured
  speeds (the best assignment of the 8 runs to the 2 capable hosts, found by trying all 256, each run's
  duration predicted from its host's measured runs: fixed seconds plus seconds per step, fitted). Target:
  within 5 %.
* GPU idle time between consecutive runs on each host (the next run's start minus the previous run's end).
  Target: at most 1 s.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from bench.harness import CaseResult, Context, lorawf_command
from bench.net import ROOT, bench_env, require_server_modules

NAME = "sweep"
TITLE = "sweep: 8 runs over 3 hosts (fast, slow, no FluxTrainer): makespan and GPU idle time"
#: Seconds per training step on the two capable hosts (the third has no FluxTrainer).
STEP_DELAYS = {"fast": 0.004, "slow": 0.008}
DATASET = ROOT / "fixtures" / "datasets" / "ink_wash"


def _dataset(folder: Path, images: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    chosen = sorted(p for p in DATASET.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    for image in chosen[:images]:
        shutil.copy(image, folder / image.name)
        if image.with_suffix(".txt").exists():
            shutil.copy(image.with_suffix(".txt"), folder / f"{image.stem}.txt")
    return folder


def _times(run_dir: Path) -> tuple[float, float, int]:
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    timings = record["timings"]

    def ts(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return ts(timings["started"]), ts(timings["finished"]), int(record["plan"]["max_train_steps"])


def duration_model(runs: list[tuple[float, float, int]]) -> tuple[float, float]:
    """``(fixed seconds, seconds per step)`` of one host, fitted to its runs' server-side durations (least
    squares over the step counts it ran; proportional when it ran only one step count)."""
    points = [(n, e - s) for s, e, n in runs]
    xs = [n for n, _ in points]
    if len(set(xs)) < 2:
        return 0.0, sum(d for _, d in points) / sum(xs)
    mean_x, mean_y = sum(xs) / len(xs), sum(d for _, d in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


def ideal_makespan(steps: list[int], models: dict[str, tuple[float, float]]) -> float:
    """The shortest makespan over every assignment of runs to hosts (runs on one host run one after another),
    each run's duration predicted by its host's fitted model."""
    hosts = list(models)
    best = float("inf")
    for assignment in itertools.product(hosts, repeat=len(steps)):
        load = dict.fromkeys(hosts, 0.0)
        for n, host in zip(steps, assignment):
            fixed, per_step = models[host]
            load[host] += fixed + n * per_step
        best = min(best, max(load.values()))
    return best


def run(ctx: Context) -> CaseResult:
    require_server_modules()
    from lorawf.comfy.schema import bundled_object_info
    from tests.comfy_server.plugin import start_server

    result = CaseResult(NAME, TITLE)
    work = ctx.workdir / "sweep"
    work.mkdir(parents=True, exist_ok=True)
    bare = {k: v for k, v in bundled_object_info().items()
            if v.get("python_module") != "custom_nodes.ComfyUI-FluxTrainer"}
    servers = {name: start_server(work / f"root-{name}", log_dir=work, step_delay=delay)
               for name, delay in STEP_DELAYS.items()}
    servers["bare"] = start_server(work / "root-bare", log_dir=work, object_info=bare)
    try:
        images = (13, 20) if ctx.quick else (25, 40)
        _dataset(work / "data" / "a", images[0])
        _dataset(work / "data" / "b", images[1])
        tables = "".join(f'\n[[server]]\nname = "{n}"\nurl = "{s.url}"\n' for n, s in servers.items())
        (work / "sweep.toml").write_text(
            'name = "bench"\n\n[[dataset]]\nfolder = "data/a"\ntoken = "alpha"\n\n[[dataset]]\n'
            'folder = "data/b"\ntoken = "beta"\n\n[grid]\nlr = [1e-4, 4e-4]\ndim = [16, 32]\n' + tables,
            encoding="utf-8")
        env = bench_env()
        env.update({"XDG_CACHE_HOME": str(work / "cache"), "LORAWF_SWEEP_POLL": "0.25"})
        ctx.log(f"sweep: 8 runs of {images} images over fast/slow/bare")
        proc = subprocess.run([*lorawf_command(), "sweep", str(work / "sweep.toml"), "--out", str(work / "out"),
                               "--json", "--no-page"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=1800, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"lorawf sweep exited {proc.returncode}: {proc.stderr[-500:]}")
    finally:
        for server in servers.values():
            server.stop()
    record = json.loads((work / "out" / "sweep.json").read_text(encoding="utf-8"))
    spans: dict[str, list[tuple[float, float, int]]] = {}
    for entry in record["runs"]:
        spans.setdefault(entry["host"], []).append(_times(work / "out" / entry["name"]))
    models = {h: duration_model(runs) for h, runs in spans.items()}
    everything = [r for runs in spans.values() for r in runs]
    makespan = max(e for _s, e, _ in everything) - min(s for s, _e, _ in everything)
    ideal = ideal_makespan([n for _s, _e, n in everything], models)
    idle = []
    for runs in spans.values():
        ordered = sorted(runs)
        idle += [later[0] - earlier[1] for earlier, later in itertools.pairwise(ordered)]
    result.metric("makespan (server timestamps)", "s", [makespan])
    result.metric("ideal makespan for the measured speeds", "s", [ideal])
    result.metric("GPU idle between consecutive runs, max", "s", [max(idle) if idle else 0.0])
    result.target("makespan / ideal", "the sweep's makespan over the ideal schedule's", makespan / ideal, "<=",
                  1.05, "x")
    result.target("GPU idle between runs", "longest wait of a host between two of our runs", max(idle or [0.0]),
                  "<=", 1.0, "s")
    result.info.update(runs_per_host={h: len(r) for h, r in spans.items()},
                       duration_model={h: [round(a, 3), round(b, 6)] for h, (a, b) in models.items()},
                       runs={h: sorted(n for _s, _e, n in r) for h, r in spans.items()},
                       idle_gaps=[round(g, 3) for g in idle], images=list(images))
    return result
