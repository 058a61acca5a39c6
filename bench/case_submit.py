"""Case 3: submit latency. From process start to prompt accepted: ``lorawf submit WF --no-wait`` against a
bare ``curl`` POST of the same JSON body, and ``python -c pass`` (the interpreter start any Python tool pays).

The server is the project's fake ComfyUI (via ``bench.server``, prompt worker off so queued prompts do not
run and load the CPU). Both clients get the same 43-image training workflow and the server validates it in
full each time; curl is sent the body lorawf sends (``prompt``, ``prompt_id``, ``client_id``). lorawf's default
submit first checks the graph against the live server's schemas (``GET /object_info``); the variant with
``--no-preflight`` is shown beside it (the target is on the default).
"""

from __future__ import annotations

import json
import subprocess
import uuid

from bench.harness import CaseResult, Context, interleaved, lorawf_command, python_floor
from bench.net import bench_env, bench_server, require_curl, require_server_modules, training_workflow

NAME = "submit"
TITLE = "submit latency: lorawf submit --no-wait vs curl POST (+ interpreter start)"


def run(ctx: Context) -> CaseResult:
    """Measure the three commands interleaved against one server."""
    require_server_modules()
    curl = require_curl()
    result = CaseResult(NAME, TITLE)
    workflow = training_workflow()
    wf_file = ctx.workdir / "submit_workflow.json"
    wf_file.write_text(json.dumps(workflow), encoding="utf-8")
    body_file = ctx.workdir / "submit_body.json"
    body_file.write_text(json.dumps({"prompt": workflow, "prompt_id": str(uuid.uuid4()),
                                     "client_id": uuid.uuid4().hex}), encoding="utf-8")
    result.info["body_bytes"] = body_file.stat().st_size
    with bench_server(ctx.workdir / "submit_root") as server:
        commands = {
            "python -c pass": python_floor(),
            "curl POST /prompt": [curl, "-sS", "-f", "-o", "/dev/null", "-X", "POST",
                                  "-H", "Content-Type: application/json",
                                  "--data-binary", f"@{body_file}", f"{server.url}/prompt"],
            "lorawf submit --no-wait": [*lorawf_command(), "submit", str(wf_file), "--server", server.url,
                                        "--no-wait"],
        }
        if "--no-preflight" in _submit_help():
            commands["lorawf submit --no-wait --no-preflight"] = [
                *commands["lorawf submit --no-wait"], "--no-preflight"]
        rounds = max(ctx.repeat, 3) * (1 if ctx.quick else 2)
        ctx.log(f"submit: {rounds} interleaved rounds")
        runs = interleaved(commands, rounds, env=bench_env())
        result.info["queued_prompts"] = len(server.get("/queue")["queue_pending"])
    for name, samples in runs.items():
        result.metric(f"{name} wall", "s", [r.wall for r in samples])
    floor = result.metrics["python -c pass wall"].median
    curl_t = result.metrics["curl POST /prompt wall"].median
    ours = result.metrics["lorawf submit --no-wait wall"].median
    limit = curl_t + floor
    result.info["curl_plus_python_s"] = limit
    result.info["lorawf_over_curl"] = ours / curl_t
    result.target("submit_over_limit", "lorawf submit / (curl + python -c pass)", ours / limit, "<=", 4.0, "x")
    bare = result.metrics.get("lorawf submit --no-wait --no-preflight wall")
    if bare is not None:
        result.info["no_preflight_over_limit"] = bare.median / limit
    return result


def _submit_help() -> str:
    """``lorawf submit --help`` (to see whether this version has ``--no-preflight``)."""
    return subprocess.run([*lorawf_command(), "submit", "--help"], capture_output=True, text=True,
                          check=False).stdout
