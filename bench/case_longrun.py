"""Case 6: long run. One ``lorawf watch`` process follows a run of 1,000,000 progress events (100,000 with
``--quick``) sent at full speed; its resident memory is sampled from /proc all along and must stay flat.

The target run is paced at 10,000 msg/s, below the client's capacity, so nothing queues and any growth is
state kept per event. Start RSS is taken once 5% of the events have been sent (imports done, socket open,
display set up), end RSS at the last sample. A second run at full speed shows what a server that outpaces the
client costs: the client's inbox queue is unbounded, so the backlog is held in memory (target: the same
64 MiB bound as downloads). Run once per benchmark (``--repeat`` does not apply).
"""

from __future__ import annotations

import subprocess
import time

from bench.case_events import flood_in_thread, submit_pending
from bench.harness import CaseResult, Context, MiB, lorawf_command, rss_bytes
from bench.net import bench_env, bench_server, loop_nodes, require_server_modules, training_workflow

NAME = "longrun"
TITLE = "long run: RSS of lorawf watch over 1,000,000 progress events"
#: Below the client's measured capacity (case events), so the client keeps up and nothing queues.
PACED_RATE = 10_000.0


def one_watch(ctx: Context, count: int, rate: float) -> tuple[list[tuple[float, int, int]], float]:
    """Stream ``count`` events at ``rate`` msg/s (0: full speed) into one ``lorawf watch``; sample its RSS."""
    workflow = training_workflow()
    series: list[tuple[float, int, int]] = []  # (seconds, events sent, rss)
    with bench_server(ctx.workdir / "longrun_root") as server:
        prompt_id, client_id = submit_pending(server, workflow)
        proc = subprocess.Popen([*lorawf_command(), "watch", prompt_id, "--server", server.url],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=bench_env())
        try:
            body = {"prompt_id": prompt_id, "client_id": client_id, "count": count, "rate": rate,
                    "mix": "progress", "loops": loop_nodes(workflow)}
            ctx.log(f"longrun: {count:,} progress events into one lorawf watch at "
                    f"{f'{rate:,.0f} msg/s' if rate else 'full speed'}")
            thread, answer = flood_in_thread(server, body)
            start = time.monotonic()
            while True:
                sent = int(server.get("/__bench__/flood").get("sent", 0)) if thread.is_alive() else count
                rss = rss_bytes(proc.pid)
                if rss:
                    series.append((time.monotonic() - start, sent, rss))
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
                if time.monotonic() - start > 1800:
                    raise RuntimeError("long run did not finish in 30 minutes")
            code = proc.wait(120)
            thread.join(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if "error" in answer or code != 0:
        raise RuntimeError(f"lorawf watch exited {code}; flood: {answer.get('error', 'ok')}")
    return series, time.monotonic() - start


def run(ctx: Context) -> CaseResult:
    """A paced run (the target: no backlog, so any growth is state kept per event), then a full-speed one."""
    require_server_modules()
    result = CaseResult(NAME, TITLE)
    count = 100_000 if ctx.quick else 1_000_000
    series, elapsed = one_watch(ctx, count, PACED_RATE)
    steady = [s for s in series if s[1] >= count * 0.05]
    if len(steady) < 2:
        raise RuntimeError(f"too few RSS samples ({len(series)}) to judge")
    start_rss, end_rss = steady[0][2], steady[-1][2]
    result.metric("paced: RSS at 5% of events", "B", [start_rss])
    result.metric("paced: RSS at end", "B", [end_rss])
    result.metric("paced: RSS max", "B", [max(s[2] for s in series)])
    result.info.update(events=count, paced_rate=PACED_RATE, paced_seconds=elapsed,
                       paced_rss_series=[[round(t, 2), n, r] for t, n, r in series[:: max(1, len(series) // 50)]])
    fast, fast_elapsed = one_watch(ctx, count, 0)
    result.metric("full speed: RSS max", "B", [max(s[2] for s in fast)],
                  "server outpacing the client: the backlog is held in memory")
    result.metric("full speed: RSS at end", "B", [fast[-1][2]])
    result.metric("full speed: events/s through lorawf watch", "msg/s", [count / fast_elapsed],
                  "whole process, wall time from stream start to exit")
    result.info.update(full_speed_seconds=fast_elapsed,
                       full_speed_rss_series=[[round(t, 2), n, r] for t, n, r in fast[:: max(1, len(fast) // 50)]])
    result.target("rss_growth", f"RSS growth over {count:,} paced events (end - start)", end_rss - start_rss, "<=",
                  4 * MiB, "B")
    result.target("rss_backlog", f"peak RSS over {count:,} events at full speed", max(s[2] for s in fast), "<=",
                  64 * MiB, "B")
    return result
