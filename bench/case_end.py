"""Case: end noticed. How long after the server sends ``execution_success`` a ``lorawf watch`` process has
exited, through the shaped link (:mod:`bench.link`, 50 ms round trip, 100 Mbit/s) and on loopback.

Each round queues a prompt on the bench server (no worker: it stays pending), starts ``lorawf watch
PROMPT_ID`` (plain log output to /dev/null), and has the server play a short run to that prompt's websocket
(``POST /__bench__/flood``, 20 progress messages at 200/s). The server reports the ``time.monotonic()`` at
which ``execution_success`` left it; the bench reads the same system-wide clock when the process has been
reaped. The difference is what a user waits between the end of the run and their prompt back.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

from bench.case_events import submit_pending
from bench.harness import CaseResult, Context, lorawf_command
from bench.net import (
    Shape,
    bench_env,
    bench_server,
    loop_nodes,
    require_server_modules,
    shaped_link,
    training_workflow,
)

NAME = "end"
TITLE = "end noticed: execution_success to lorawf watch's exit, at 50 ms RTT and on loopback"
SHAPE = Shape(delay_ms=25.0, mbit=100.0)


def one_round(server: Any, url: str, workflow: dict[str, Any]) -> float:
    """Seconds from ``execution_success`` leaving the server to the watch process's exit."""
    prompt_id, client_id = submit_pending(server, workflow)
    proc = subprocess.Popen([*lorawf_command(), "watch", prompt_id, "--server", url], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=bench_env())
    answer: dict[str, Any] = {}

    def flood() -> None:
        try:
            answer.update(server.post("/__bench__/flood", {
                "prompt_id": prompt_id, "client_id": client_id, "count": 20, "rate": 200,
                "loops": loop_nodes(workflow)[:1], "start_delay": 0.5}))
        except Exception as exc:  # noqa: BLE001 - reported below
            answer["error"] = repr(exc)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    _, err = proc.communicate(timeout=120)
    exited = time.monotonic()
    thread.join(timeout=60)
    if proc.returncode != 0 or "error" in answer:
        raise RuntimeError(f"watch exited {proc.returncode}: {err.decode(errors='replace')[-300:]} {answer}")
    return exited - float(answer["success_at"])


def run(ctx: Context) -> CaseResult:
    require_server_modules()
    result = CaseResult(NAME, TITLE)
    workflow = training_workflow()
    rounds = 3 if ctx.quick else max(5, ctx.repeat)
    samples: dict[str, list[float]] = {"50ms": [], "loopback": []}
    with bench_server(ctx.workdir / "end_root") as server, shaped_link(server, SHAPE) as shaped_url:
        for i in range(rounds):
            ctx.log(f"end noticed: round {i + 1}/{rounds}")
            for link, url in (("50ms", shaped_url), ("loopback", server.url)):
                samples[link].append(one_round(server, url, workflow))
    shaped = result.metric("end noticed at 50 ms RTT", "s", samples["50ms"])
    result.metric("end noticed on loopback", "s", samples["loopback"])
    result.info["link"] = SHAPE.describe()
    result.target("end_noticed", "execution_success to exit at 50 ms RTT", shaped.median, "<=", SHAPE.rtt + 0.05, "s")
    return result
