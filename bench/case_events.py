"""Case 4: event handling. How many websocket messages per second the client receives, parses, filters and
folds into progress state, fed at full speed; and how much CPU ``lorawf watch`` burns while a realistic run
emits 10 messages/s.

Throughput runs lorawf's own :func:`lorawf.net.prompts.watch_prompt` in this process (websocket, JSON decode, the
waiter loop and the :class:`~lorawf.comfy.events.RunState` fold; the sink only counts), against ``bench.server``
sending a pre-encoded stream as fast as the socket takes it. Two streams: ``progress`` (only progress
messages, plus ``executing`` at each loop start: the target) and ``comfy`` (each step preceded by the
``progress_state`` message ComfyUI 0.3.64 sends, whose size grows with the finished nodes: for information).

Idle CPU runs the real ``lorawf watch PROMPT_ID`` process (plain log output to /dev/null) and reads its CPU
time from /proc at the start and end of a 10 msg/s stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from typing import Any

from bench.harness import CaseResult, Context, cpu_seconds, lorawf_command
from bench.net import (
    RunningServer,
    bench_env,
    bench_server,
    loop_nodes,
    require_server_modules,
    training_workflow,
    wait_until,
)

NAME = "events"
TITLE = "event handling: messages/s parsed+folded by the client; CPU of lorawf watch at 10 msg/s"


def submit_pending(server: RunningServer, workflow: dict[str, Any]) -> tuple[str, str]:
    """Queue ``workflow`` (it stays pending: no worker) with a fresh client id; return (prompt_id, client_id)."""
    client_id = uuid.uuid4().hex
    answer = server.post("/prompt", {"prompt": workflow, "client_id": client_id})
    return str(answer["prompt_id"]), client_id


def flood_in_thread(server: RunningServer, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``POST /__bench__/flood`` in a thread (it answers when the stream is over)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out.update(server.post("/__bench__/flood", body))
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            out["error"] = repr(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def watch_in_process(server: RunningServer, workflow: dict[str, Any], count: int, mix: str) -> dict[str, float]:
    """One full-speed stream of ``count`` progress messages into :func:`watch_prompt`; returns timings."""
    from lorawf.comfy.events import Event, Progress
    from lorawf.net.http import ComfyClient
    from lorawf.net.prompts import RunResult, WaitOptions, watch_prompt
    from lorawf.net.settings import ServerSettings

    prompt_id, client_id = submit_pending(server, workflow)
    seen = {"progress": 0, "events": 0}
    times: dict[str, float] = {}

    def sink(event: Event) -> None:
        seen["events"] += 1
        if isinstance(event, Progress):
            if not seen["progress"]:
                times["first"] = time.perf_counter()
            seen["progress"] += 1
            times["last"] = time.perf_counter()

    body = {"prompt_id": prompt_id, "client_id": client_id, "count": count, "rate": 0, "mix": mix,
            "loops": loop_nodes(workflow)}
    thread, answer = flood_in_thread(server, body)
    settings = ServerSettings(server.url)

    async def watch() -> RunResult:
        async with ComfyClient(settings) as client:
            return await watch_prompt(client, prompt_id, sink, options=WaitOptions(poll_interval=30.0))

    result = asyncio.run(watch())
    thread.join(60)
    if "error" in answer:
        raise RuntimeError(f"flood failed: {answer['error']}")
    if result.outcome != "success" or seen["progress"] != count:
        raise RuntimeError(f"watch ended {result.outcome} after {seen['progress']}/{count} progress events")
    seconds = times["last"] - times["first"]
    return {"frames": float(answer["frames"]), "progress": float(count), "seconds": seconds,
            "server_seconds": float(answer["seconds"])}


def idle_cpu(server: RunningServer, workflow: dict[str, Any], seconds: float, rate: float) -> dict[str, float]:
    """CPU share of a ``lorawf watch`` process over a ``rate`` msg/s stream lasting ``seconds``."""
    prompt_id, client_id = submit_pending(server, workflow)
    count = int(seconds * rate)
    body = {"prompt_id": prompt_id, "client_id": client_id, "count": count, "rate": rate, "mix": "progress",
            "loops": loop_nodes(workflow)}
    proc = subprocess.Popen([*lorawf_command(), "watch", prompt_id, "--server", server.url],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=bench_env())
    try:
        thread, answer = flood_in_thread(server, body)
        # The stream starts once the watcher's socket is registered; measure from the first messages on.
        if not wait_until(lambda: server.get("/__bench__/flood")["running"], 60):
            raise RuntimeError("lorawf watch never connected")
        time.sleep(min(1.0, seconds / 5))
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        thread.join(seconds * 3 + 60)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        code = proc.wait(60)
        if "error" in answer or code != 0:
            raise RuntimeError(f"idle watch failed: exit {code}, {answer.get('error', '')}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"cpu_share": (cpu1 - cpu0) / (t1 - t0), "wall": t1 - t0, "cpu": cpu1 - cpu0}


def run(ctx: Context) -> CaseResult:
    """Throughput at full speed (both streams), then CPU at 10 msg/s."""
    require_server_modules()
    result = CaseResult(NAME, TITLE)
    workflow = training_workflow()
    count = 20_000 if ctx.quick else 200_000
    comfy_count = count // 4
    idle_seconds = 3.0 if ctx.quick else 10.0
    idle_runs = 1 if ctx.quick else min(ctx.repeat, 3)
    with bench_server(ctx.workdir / "events_root") as server:
        watch_in_process(server, workflow, 2000, "progress")  # warm-up: imports, first connection
        runs: dict[str, list[dict[str, float]]] = {"progress": [], "comfy": []}
        for i in range(ctx.repeat):
            ctx.log(f"events: full-speed streams, round {i + 1}/{ctx.repeat}")
            runs["progress"].append(watch_in_process(server, workflow, count, "progress"))
            runs["comfy"].append(watch_in_process(server, workflow, comfy_count, "comfy"))
        idle = []
        for i in range(idle_runs):
            ctx.log(f"events: lorawf watch at 10 msg/s for {idle_seconds:g} s ({i + 1}/{idle_runs})")
            idle.append(idle_cpu(server, workflow, idle_seconds, 10.0))
    rate = result.metric("progress stream msg/s", "msg/s", [r["frames"] / r["seconds"] for r in runs["progress"]],
                         "websocket messages folded per second (progress + executing)")
    result.metric("progress stream server send msg/s", "msg/s",
                  [r["frames"] / r["server_seconds"] for r in runs["progress"]],
                  "how fast the server pushed them (must exceed the client's rate)")
    result.metric("comfy-0.3.64 stream msg/s", "msg/s", [r["frames"] / r["seconds"] for r in runs["comfy"]],
                  "progress_state + progress per step")
    result.metric("comfy-0.3.64 stream steps/s", "steps/s",
                  [r["progress"] / r["seconds"] for r in runs["comfy"]])
    cpu = result.metric("lorawf watch CPU at 10 msg/s", "%", [r["cpu_share"] * 100 for r in idle],
                        f"CPU time / wall time over {idle_seconds:g} s of a 10 msg/s stream")
    result.info.update(progress_messages=count, comfy_progress_messages=comfy_count, idle_seconds=idle_seconds,
                       idle_runs=[{k: round(v, 4) for k, v in r.items()} for r in idle])
    result.target("throughput", "client messages/s at full speed (progress stream)", rate.median, ">=", 50_000,
                  "msg/s")
    result.target("idle_cpu", "lorawf watch CPU share at 10 msg/s", cpu.median, "<=", 2.0, "%")
    result.info["progress_stream_json_example"] = json.loads(json.dumps(
        {"type": "progress", "data": {"value": 1, "max": 250, "prompt_id": "...", "node": "1010"}}))
    return result
