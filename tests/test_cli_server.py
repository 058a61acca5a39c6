"""`lorawf submit/watch/queue/cancel` as a user runs them: real subprocesses against the fake server.

Each case checks the exit code, a one-line reason on stderr, and that no result is lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.terminal import run_on_terminal

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from lorawf.cli import main; main()"]


def workflow_file(tmp_path: Path, steps: int = 5, delay: float = 0.02, *, fail: bool = False,
                  name: str = "wf.json") -> Path:
    g: dict[str, Any] = {
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": steps, "delay": delay, "text": "hello"},
              "_meta": {"title": "Slow steps"}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "accept"}},
    }
    if fail:
        g["3"] = {"class_type": "AcceptFail", "inputs": {"message": "boom", "text": ["1", 0]}}
        g["2"]["inputs"]["text"] = ["3", 0]
    path = tmp_path / name
    path.write_text(json.dumps(g))
    return path


CACHE = tempfile.mkdtemp(prefix="lorawf-test-cache-")  # the schema cache of these runs, not the user's


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    out.update({"LORAWF_POLL_INTERVAL": "0.3", "LORAWF_RETRY_GRACE": "5", "PYTHONPATH": str(REPO),
                "XDG_CACHE_HOME": CACHE})
    out.update(extra)
    return out


def lorawf(*args: str, timeout: float = 120, **env_extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=timeout, env=env(**env_extra),
                          cwd=REPO, stdin=subprocess.DEVNULL)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_reason(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def ndjson(text: str) -> list[dict[str, Any]]:
    objs = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(o["schema"] == "lorawf.event/1" for o in objs)
    return objs


def test_submit_json_success_and_download(comfy_server: Any, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    proc = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--json",
                  "--download", str(dest))
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    assert [e["event"] for e in events][:3] == ["queued", "started", "executing"]
    assert events[2]["title"] == "Slow steps"
    done = events[-1]
    assert (done["event"], done["outcome"], done["exit_code"]) == ("done", "success", 0)
    assert done["outputs"][0]["filename"] == "accept_00001_.txt"
    download = next(e for e in events if e["event"] == "download")
    assert Path(download["path"]) == dest / "accept_00001_.txt"
    assert (dest / "accept_00001_.txt").read_text() == "hello: finished 5 steps"


def test_submit_plain_log_lines_without_terminal(comfy_server: Any, tmp_path: Path) -> None:
    proc = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url)
    assert proc.returncode == 0 and "\x1b[" not in proc.stdout
    assert "node 1 Slow steps" in proc.stdout and "succeeded (1 output file)" in proc.stdout


def test_submit_live_display_on_a_terminal(comfy_server: Any, tmp_path: Path) -> None:
    code, screen = run_on_terminal([*CLI, "submit", str(workflow_file(tmp_path, 20)), "--server", comfy_server.url],
                                   env(), REPO)
    assert code == 0
    assert "▶ node 1 Slow steps" in screen and "█" in screen and "it/s" in screen and "ETA" in screen
    assert "✔ prompt" in screen


def test_submit_failed_run_exits_1(comfy_server: Any, tmp_path: Path) -> None:
    proc = lorawf("submit", str(workflow_file(tmp_path, 2, fail=True)), "--server", comfy_server.url)
    assert_one_line_reason(proc, 1, "failed: AcceptFail #3: RuntimeError: boom")


def test_submit_rejected_exits_4_with_node_errors(comfy_server: Any, tmp_path: Path) -> None:
    wf = workflow_file(tmp_path, 20000)
    proc = lorawf("submit", str(wf), "--server", comfy_server.url, "--no-preflight")
    assert_one_line_reason(proc, 4, "prompt rejected (HTTP 400, prompt_outputs_failed_validation)")
    assert '  node 1 AcceptSlowSteps "Slow steps" (blocks output 2):' in proc.stderr
    assert "Value 20000 bigger than max of 10000: steps" in proc.stderr
    proc = lorawf("submit", str(wf), "--server", comfy_server.url, "--json", "--no-preflight")
    events = ndjson(proc.stdout)
    assert proc.returncode == 4 and events[-1]["outcome"] == "rejected" and events[-1]["exit_code"] == 4
    error = next(e for e in events if e["event"] == "error")
    assert error["node_errors"][0]["input_name"] == "steps" and error["node_errors"][0]["received"] == 20000


def test_preflight_refuses_a_doomed_workflow_before_posting(comfy_server: Any, tmp_path: Path) -> None:
    proc = lorawf("submit", str(workflow_file(tmp_path, 20000)), "--server", comfy_server.url)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "preflight: the server would reject" in proc.stderr and "nothing was queued" in proc.stderr
    assert "steps" in proc.stderr and "10000" in proc.stderr
    posted = [r for r in comfy_server.requests() if r.method == "POST" and r.path.endswith("/prompt")]
    assert posted == []  # a doomed workflow is never queued


def test_preflight_warns_about_inputs_the_server_would_ignore(comfy_server: Any, tmp_path: Path) -> None:
    path = workflow_file(tmp_path)
    graph = json.loads(path.read_text())
    graph["1"]["inputs"]["stepz"] = 3  # a typo the server silently drops
    path.write_text(json.dumps(graph))
    proc = lorawf("submit", str(path), "--server", comfy_server.url)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "stepz" in proc.stderr


@pytest.mark.parametrize(("mode", "needle"), [("500", "server error (HTTP 500)"), ("413", "HTTP 413"),
                                              ("malformed", "malformed JSON"), ("close", "cannot reach")])
def test_submit_bad_answers_exit_5(comfy_server: Any, tmp_path: Path, mode: str, needle: str) -> None:
    comfy_server.control("fail_next", route="/prompt", method="POST", mode=mode)
    proc = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url)
    assert_one_line_reason(proc, 5, needle)


def test_transient_bad_answers_while_waiting_lose_nothing(comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("silence", after_progress=1)
    comfy_server.control("fail_next", route="/history/{prompt_id}", method="GET", mode="500", count=2)
    comfy_server.control("fail_next", route="/queue", method="GET", mode="malformed", count=2)
    proc = lorawf("submit", str(workflow_file(tmp_path, 10)), "--server", comfy_server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert ndjson(proc.stdout)[-1]["outputs"][0]["filename"] == "accept_00001_.txt"


def test_unreachable_server_exits_5(tmp_path: Path) -> None:
    proc = lorawf("submit", str(workflow_file(tmp_path)), LORAWF_SERVER="http://127.0.0.1:9")
    assert_one_line_reason(proc, 5, "cannot reach http://127.0.0.1:9")


def test_websocket_drop_and_silence_lose_nothing(comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("drop_ws", after_progress=2)
    proc = lorawf("submit", str(workflow_file(tmp_path, 30)), "--server", comfy_server.url, "--json")
    events = ndjson(proc.stdout)
    assert proc.returncode == 0 and events[-1]["outcome"] == "success" and events[-1]["outputs"]
    assert {"connection_lost", "reconnected"} <= {e.get("code") for e in events if e["event"] == "warning"}
    comfy_server.control("silence", after_progress=1)
    proc = lorawf("submit", str(workflow_file(tmp_path, 10)), "--server", comfy_server.url, "--json")
    events = ndjson(proc.stdout)
    assert proc.returncode == 0 and events[-1]["outputs"][0]["filename"] == "accept_00002_.txt"


def test_server_restart_is_prompt_lost(comfy_server: Any, tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "submit", str(workflow_file(tmp_path, 500)), "--server", comfy_server.url,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            cwd=REPO, stdin=subprocess.DEVNULL)
    wait_for_event(proc, "progress")
    comfy_server.control("restart")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert next(line for line in err.splitlines() if line.startswith("error:")).startswith("error: prompt ")
    assert "is lost" in err
    assert json.loads(out.splitlines()[-1])["outcome"] == "lost"


def test_timeout_exits_5_and_prompt_keeps_running(comfy_server: Any, tmp_path: Path) -> None:
    proc = lorawf("submit", str(workflow_file(tmp_path, 500)), "--server", comfy_server.url, "--timeout", "0.5")
    line = assert_one_line_reason(proc, 5, "gave up waiting after 0.5 s")
    pid = line.split("prompt ")[1].split()[0]
    assert pid in comfy_server.state()["queue_running"]
    assert lorawf("cancel", pid, "--server", comfy_server.url).returncode == 0


def test_hostile_output_filename_is_not_written_outside_dir(comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("hostile_filename", filename="../../x")
    dest = tmp_path / "a" / "b" / "dl"
    proc = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--download", str(dest))
    assert_one_line_reason(proc, 5, "not downloaded: unsafe output name from server refused")
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path / "x").exists()
    assert not dest.exists() or not any(dest.rglob("*"))


def test_auth_token_and_headers_are_sent_and_never_printed(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(auth_token="tok-s3cret-123")
    wf = str(workflow_file(tmp_path))
    proc = lorawf("submit", wf, "--server", server.url)
    assert_one_line_reason(proc, 5, "401")
    proc = lorawf("submit", wf, "--server", server.url, "--json", "--header", "X-Api-Key: hdr-s3cret-456",
                  LORAWF_TOKEN="tok-s3cret-123")
    assert proc.returncode == 0, proc.stderr
    for secret in ("tok-s3cret-123", "hdr-s3cret-456"):
        assert secret not in proc.stdout and secret not in proc.stderr
    ours = [r for r in server.requests() if r.header("X-Api-Key") == "hdr-s3cret-456"]
    assert {r.websocket for r in ours} == {True, False}
    assert all(r.header("Authorization") == "Bearer tok-s3cret-123" and r.header("Origin") is None for r in ours)


def wait_for_event(proc: subprocess.Popen[str], event: str, timeout: float = 60) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        obj = json.loads(line)
        if obj["event"] == event:
            return dict(obj)
    raise AssertionError(f"no {event} event")


def test_ctrl_c_interrupts_our_running_prompt(comfy_server: Any, tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "submit", str(workflow_file(tmp_path, 500)), "--server", comfy_server.url,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            cwd=REPO, stdin=subprocess.DEVNULL)
    pid = wait_for_event(proc, "progress")["prompt_id"]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"error: interrupted running prompt {pid}" in err.splitlines()
    events = ndjson(out)
    assert events[-2]["event"] == "cancel" and events[-2]["action"] == "interrupted"
    assert (events[-1]["outcome"], events[-1]["exit_code"]) == ("cancelled", 130)
    history = httpx.get(f"{comfy_server.url}/history/{pid}").json()[pid]
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_ctrl_c_removes_our_pending_prompt_and_cancel_command(comfy_server: Any, tmp_path: Path) -> None:
    blocker = lorawf("submit", str(workflow_file(tmp_path, 500)), "--server", comfy_server.url, "--no-wait")
    assert blocker.returncode == 0
    blocker_id = blocker.stdout.strip()
    assert str(uuid.UUID(blocker_id)) == blocker_id  # stdout is just the id
    proc = subprocess.Popen([*CLI, "submit", str(workflow_file(tmp_path, 1)), "--server", comfy_server.url,
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            cwd=REPO, stdin=subprocess.DEVNULL)
    queued = wait_for_event(proc, "queued")
    if queued["position"] is None:
        queued = wait_for_event(proc, "queued")
    assert queued["position"] == 1
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"error: removed pending prompt {queued['prompt_id']} from the queue" in err.splitlines()
    assert httpx.get(f"{comfy_server.url}/history/{queued['prompt_id']}").json() == {}

    queue = lorawf("queue", "--server", comfy_server.url, "--json")
    body = json.loads(queue.stdout)
    assert [r["prompt_id"] for r in body["running"]] == [blocker_id] and body["pending"] == []
    cancel = lorawf("cancel", blocker_id, "--server", comfy_server.url)
    assert cancel.returncode == 0 and cancel.stdout.strip() == f"interrupted running prompt {blocker_id}"
    watch = lorawf("watch", blocker_id, "--server", comfy_server.url)
    assert_one_line_reason(watch, 1, "was interrupted at node 1 Slow steps")


def test_queue_lists_pending_by_number(comfy_server: Any, tmp_path: Path) -> None:
    ids = []
    for _ in range(3):
        proc = lorawf("submit", str(workflow_file(tmp_path, 500)), "--server", comfy_server.url, "--no-wait")
        ids.append(proc.stdout.strip())
    proc = lorawf("queue", "--server", comfy_server.url)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("1 running, 2 pending")
    assert ids[0] in lines[1] and "running" in lines[1]
    assert lines[2].split()[:2] == ["1", ids[1]] and lines[3].split()[:2] == ["2", ids[2]]
    for pid in reversed(ids):
        assert lorawf("cancel", pid, "--server", comfy_server.url).returncode == 0


def test_watch_finished_unknown_and_running(comfy_server: Any, tmp_path: Path) -> None:
    done = lorawf("submit", str(workflow_file(tmp_path, 1)), "--server", comfy_server.url, "--json")
    pid = ndjson(done.stdout)[-1]["prompt_id"]
    watch = lorawf("watch", pid, "--server", comfy_server.url, "--json", "--download", str(tmp_path / "w"))
    assert watch.returncode == 0 and ndjson(watch.stdout)[-1]["outcome"] == "success"
    assert (tmp_path / "w" / "accept_00001_.txt").exists()
    unknown = str(uuid.uuid4())
    assert_one_line_reason(lorawf("watch", unknown, "--server", comfy_server.url), 5, f"prompt {unknown} is not")
    queued = lorawf("submit", str(workflow_file(tmp_path, 150)), "--server", comfy_server.url, "--no-wait")
    watch = lorawf("watch", queued.stdout.strip(), "--server", comfy_server.url, "--json")
    events = ndjson(watch.stdout)
    assert watch.returncode == 0 and events[-1]["outcome"] == "success"
    assert any(e["event"] == "progress" for e in events)


def test_help_does_not_import_the_client() -> None:
    code = "import sys; from lorawf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "assert 'lorawf.net.http' not in sys.modules and 'websockets' not in sys.modules, 'heavy import'"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_submit_no_wait_starts_without_httpx_or_websockets(comfy_server: Any, tmp_path: Path) -> None:
    code = ("import atexit, sys; from lorawf.cli import run; "
            "atexit.register(lambda: print('loaded', sorted(m for m in ('httpx', 'websockets', 'anyio') "
            "if m in sys.modules), file=sys.stderr)); run()")
    proc = subprocess.run([sys.executable, "-c", code, "submit", str(workflow_file(tmp_path)), "--server",
                           comfy_server.url, "--no-wait"], check=False, capture_output=True, text=True, env=env(),
                          timeout=60,
                          cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "loaded []" in proc.stderr
    state = comfy_server.state()
    assert proc.stdout.strip() in state["queue_pending"] + state["queue_running"] + state["history"]


def test_submit_no_wait_with_a_proxy_configured_uses_the_full_client(comfy_server: Any, tmp_path: Path) -> None:
    # a proxy that is never reached: the host is in NO_PROXY, so httpx's client goes direct, as the user asked
    proc = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--no-wait",
                  HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="example.invalid")
    assert proc.returncode == 5 and "cannot reach" in proc.stderr  # it went through the (dead) proxy


def test_ctrl_c_while_the_server_sits_on_a_no_wait_submit_stops_at_once(comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("stall", route="/prompt", method="POST", seconds=60)
    proc = subprocess.Popen([*CLI, "submit", str(workflow_file(tmp_path)), "--server", comfy_server.url,
                             "--no-wait", "--no-preflight"], env=env(), cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(r.path.endswith("/prompt") and r.method == "POST" for r in comfy_server.requests()):
        assert time.monotonic() < deadline, "the POST never arrived"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)  # long before the 60 s stall ends
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def server_paths(server: Any) -> list[str]:
    return [r.path for r in server.requests() if not r.path.startswith("/__test__")]


def test_a_second_submit_asks_the_server_nothing_before_its_post(comfy_server: Any, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--no-wait",
                   XDG_CACHE_HOME=cache)
    assert first.returncode == 0, first.stderr
    assert "/object_info" in server_paths(comfy_server)  # the first one fills the cache
    comfy_server.clear_requests()
    second = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--no-wait",
                    XDG_CACHE_HOME=cache)
    assert second.returncode == 0, second.stderr
    assert server_paths(comfy_server) == ["/prompt"]  # preflight from the cache: one round trip in all


def test_what_a_stale_cache_finds_is_checked_with_the_server_before_it_is_said(comfy_server: Any,
                                                                               tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--no-wait",
                  XDG_CACHE_HOME=str(cache)).returncode == 0
    (cached,) = (cache / "lorawf" / "object_info").glob("*.json")
    schemas = json.loads(cached.read_text(encoding="utf-8"))
    del schemas["AcceptSlowSteps"]  # as if the node pack was installed after the cache was written
    cached.write_text(json.dumps(schemas), encoding="utf-8")
    comfy_server.clear_requests()
    proc = lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--no-wait",
                  XDG_CACHE_HOME=str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and "does not exist" not in proc.stderr
    assert server_paths(comfy_server)[-2:] == ["/object_info", "/prompt"]
    assert "AcceptSlowSteps" in json.loads(cached.read_text(encoding="utf-8"))  # refreshed


def test_a_real_problem_is_refused_after_asking_the_server(comfy_server: Any, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    assert lorawf("submit", str(workflow_file(tmp_path)), "--server", comfy_server.url, "--no-wait",
                  XDG_CACHE_HOME=cache).returncode == 0
    comfy_server.clear_requests()
    proc = lorawf("submit", str(workflow_file(tmp_path, 20000)), "--server", comfy_server.url, XDG_CACHE_HOME=cache)
    assert proc.returncode == 4 and "preflight: the server would reject" in proc.stderr
    assert "/object_info" in server_paths(comfy_server) and "/prompt" not in server_paths(comfy_server)
