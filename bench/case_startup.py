"""Case 1: process start. ``lorawf plan --images 43`` and ``lorawf --help`` as whole processes, against
``comfy --help`` (comfy-cli, in the benchmark's own venv) and ``python -c pass`` (the floor).

Each round runs the four commands once each, in turn, after one warm-up round (so the page cache is warm for
all of them alike: this is the start a user who calls the tool many times a day sees).
"""

from __future__ import annotations

from bench.comfy_venv import comfy_executable
from bench.harness import CaseResult, Context, Skip, interleaved, lorawf_command, python_floor

NAME = "startup"
TITLE = "cold start of whole processes: lorawf vs comfy-cli vs bare python"


def run(ctx: Context) -> CaseResult:
    """Measure and compare the four process starts."""
    result = CaseResult(NAME, TITLE)
    lorawf = lorawf_command()
    commands: dict[str, list[str]] = {
        "python -c pass": python_floor(),
        "lorawf plan --images 43": [*lorawf, "plan", "--images", "43"],
        "lorawf --help": [*lorawf, "--help"],
    }
    comfy_reason = ""
    try:
        commands["comfy --help"] = [str(comfy_executable(ctx)), "--help"]
    except Skip as exc:
        comfy_reason = str(exc)
    rounds = max(ctx.repeat, 3) * (1 if ctx.quick else 2)
    ctx.log(f"startup: {rounds} interleaved rounds of {len(commands)} commands")
    runs = interleaved(commands, rounds)
    result.info["lorawf_command"] = lorawf
    for name, samples in runs.items():
        result.metric(f"{name} wall", "s", [r.wall for r in samples], f"spawn to exit of `{name}`")
    for name, samples in runs.items():
        result.metric(f"{name} peak RSS", "B", [r.maxrss_bytes for r in samples])

    floor = result.metrics["python -c pass wall"].median
    plan = result.metrics["lorawf plan --images 43 wall"].median
    helps = result.metrics["lorawf --help wall"].median
    result.target("plan_minus_python", "lorawf plan minus python -c pass", plan - floor, "<=", 0.100, "s")
    result.target("help_minus_python", "lorawf --help minus python -c pass", helps - floor, "<=", 0.100, "s")
    if "comfy --help" in runs:
        comfy = result.metrics["comfy --help wall"].median
        result.target("plan_over_comfy", "lorawf plan / comfy --help", plan / comfy, "<=", 0.2, "x")
        result.target("help_over_comfy", "lorawf --help / comfy --help", helps / comfy, "<=", 0.2, "x")
    else:
        result.info["comfy_skipped"] = comfy_reason
        result.reason = f"comfy-cli comparison skipped: {comfy_reason}"
    result.info["plan_over_python"] = plan / floor
    return result
