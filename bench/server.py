"""Bench-only server: the project's fake ComfyUI (``tests.comfy_server``) plus a few ``/__bench__`` routes.

Run as ``python -m bench.server --root DIR`` (prints ``LISTENING <port>``). It imports the test server's
app unchanged and adds:

* no prompt worker by default: submitted prompts stay pending, so a benchmark that submits hundreds of
  prompts measures ``POST /prompt`` and not the simulated training running behind it (``--worker`` to run);
* ``POST /__bench__/flood`` ``{prompt_id, client_id, count, rate, mix, loops: [[node, steps], ...]}``: wait
  until ``client_id``'s websocket is registered, send ``execution_start``, then ``count`` progress messages
  walking through the training loops (``executing`` at each loop start) as fast as the socket takes them
  (``rate`` 0) or at ``rate`` messages/s, then ``execution_success``, record a success history entry and send
  ``executing`` ``node: null``. With ``mix`` ``"comfy"`` every progress is preceded by a ``progress_state``
  message as ComfyUI 0.3.64 sends it. Answers when done, with the server-side send time and the moment
  (``time.monotonic()``, the same clock in every process) ``execution_success`` went out;
* ``GET /__bench__/flood`` the messages sent so far by the running flood (for memory sampling).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

FLOOD_KEY: web.AppKey[dict[str, Any]] = web.AppKey("bench_flood", dict)
STATE_KEY: web.AppKey[Any] = web.AppKey("bench_state", object)


def _progress_state(prompt_id: str, done: list[str], running: str, value: int, maximum: int) -> str:
    def entry(node: str, state: str, v: int, m: int) -> dict[str, Any]:
        return {"value": v, "max": m, "state": state, "node_id": node, "prompt_id": prompt_id,
                "display_node_id": node, "parent_node_id": None, "real_node_id": node}

    nodes = {n: entry(n, "finished", 1, 1) for n in done}
    nodes[running] = entry(running, "running", value, maximum)
    return json.dumps({"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": nodes}})


def flood_messages(prompt_id: str, loops: list[tuple[str, int]], count: int, mix: str) -> Any:
    """Yield the websocket text frames of a run with ``count`` progress messages over ``loops``."""
    yield json.dumps({"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": 0}})
    sent = 0
    # Pre-encode one round of frames (the run repeats its loops until ``count`` is reached).
    rounds: list[tuple[bool, str]] = []
    done: list[str] = []
    for node, steps in loops:
        rounds.append((False, json.dumps({"type": "executing", "data": {
            "node": node, "display_node": node, "prompt_id": prompt_id}})))
        for value in range(1, steps + 1):
            if mix == "comfy":
                rounds.append((False, _progress_state(prompt_id, done, node, value, steps)))
            rounds.append((True, json.dumps({"type": "progress", "data": {
                "value": value, "max": steps, "prompt_id": prompt_id, "node": node}})))
        done.append(node)
    while sent < count:
        for is_progress, frame in rounds:
            if sent >= count:
                break
            yield frame
            sent += is_progress


async def _flood(request: web.Request) -> web.Response:
    from tests.comfy_server.app import ServerState

    state: ServerState = request.app[STATE_KEY]
    status = request.app[FLOOD_KEY]
    body = await request.json()
    prompt_id, client_id = str(body["prompt_id"]), str(body["client_id"])
    count, rate = int(body["count"]), float(body.get("rate", 0))
    loops = [(str(n), int(s)) for n, s in body["loops"]]
    deadline = time.monotonic() + float(body.get("socket_timeout", 30))
    while client_id not in state.sockets:
        if time.monotonic() > deadline:
            return web.json_response({"error": f"no websocket for client {client_id}"}, status=409)
        await asyncio.sleep(0.002)
    ws = state.sockets[client_id]
    # Let the watcher finish its first /history + /queue poll: a run already in history is over for it.
    await asyncio.sleep(float(body.get("start_delay", 0.3)))
    status.update(sent=0, count=count, running=True)
    start = time.perf_counter()
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    sent = 0
    for frame in flood_messages(prompt_id, loops, count, str(body.get("mix", "progress"))):
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send_str(frame)
        sent += 1
        if sent & 1023 == 0:
            status["sent"] = sent
    seconds = time.perf_counter() - start
    await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": 0}}))
    success_at = time.monotonic()  # system-wide clock: comparable with the bench's own readings
    item = next((e[3] for e in state.queue if e[1] == prompt_id), None)
    state.delete_queue_item(prompt_id)
    state.history[prompt_id] = {
        "prompt": list(item) if item else [0, prompt_id, {}, {}, []],
        "outputs": {},
        "status": {"status_str": "success", "completed": True,
                   "messages": [["execution_start", {"prompt_id": prompt_id}],
                                ["execution_success", {"prompt_id": prompt_id}]]},
        "meta": {},
    }
    await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}))
    status.update(sent=sent, running=False)
    return web.json_response({"frames": sent, "seconds": seconds, "success_at": success_at})


async def _flood_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[FLOOD_KEY])



async def serve(root: Path, port: int, worker: bool) -> None:
    """Serve the test server's app with the bench routes until SIGTERM/SIGINT."""
    from tests.comfy_server.app import ServerState, make_app

    state = ServerState(root)
    state.paths.create("fake")
    app = make_app(state)
    app[STATE_KEY] = state
    app[FLOOD_KEY] = {"sent": 0, "count": 0, "running": False}
    app.router.add_post("/__bench__/flood", _flood)
    app.router.add_get("/__bench__/flood", _flood_status)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    if worker:
        state.start_tasks()
    else:
        state.publisher_task = asyncio.get_running_loop().create_task(state.publisher())
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.server --root DIR [--port N] [--worker]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help="run submitted prompts (default: keep them pending)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.root, args.port, args.worker))


if __name__ == "__main__":
    main()
