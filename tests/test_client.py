"""The async client against the fake ComfyUI server (real process, real ports on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorawf.comfy.events import Download, Event, OutputFile, Progress, Queued, WarningEvent
from lorawf.errors import (
    Cancelled,
    PromptLost,
    PromptRejected,
    ProtocolError,
    ServerUnreachable,
    WaitTimeout,
    exit_code_for,
)
from lorawf.net import download, prompts
from lorawf.net.http import ComfyClient, fetch_object_info, fetch_system_stats
from lorawf.net.prompts import RunResult, WaitOptions
from lorawf.net.settings import ServerSettings
from lorawf.runs import engine


# The net layer works on an open client; these open one per call, like a one-shot command.
async def submit_and_wait(settings: ServerSettings, *args: Any, **kwargs: Any) -> RunResult:
    async with ComfyClient(settings) as client:
        return await prompts.submit_and_wait(client, *args, **kwargs)


async def watch_prompt(settings: ServerSettings, *args: Any, **kwargs: Any) -> RunResult:
    async with ComfyClient(settings) as client:
        return await prompts.watch_prompt(client, *args, **kwargs)


async def download_outputs(settings: ServerSettings, *args: Any, **kwargs: Any) -> list[str]:
    async with ComfyClient(settings) as client:
        return await download.download_outputs(client, *args, **kwargs)


async def cancel(settings: ServerSettings, prompt_id: str) -> tuple[str, str]:
    done = await engine.cancel(settings, prompt_id)
    return done.action, done.message


def http_get(url: str, **kw: Any) -> httpx.Response:
    """Blocking helper (the server is another process: blocking the test loop briefly is harmless)."""
    return httpx.get(url, **kw)


def http_post(url: str, **kw: Any) -> httpx.Response:
    return httpx.post(url, **kw)


FAST = WaitOptions(poll_interval=0.3, grace=5.0)


def graph(steps: int = 5, delay: float = 0.02, *, fail: bool = False, text: str = "hello") -> dict[str, Any]:
    g: dict[str, Any] = {
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": steps, "delay": delay, "text": text},
              "_meta": {"title": "Slow steps"}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "accept"}},
    }
    if fail:
        g["3"] = {"class_type": "AcceptFail", "inputs": {"message": "boom", "text": ["1", 0]}}
        g["2"]["inputs"]["text"] = ["3", 0]
    return g


def settings_for(server: Any, **kw: Any) -> ServerSettings:
    return ServerSettings.resolve(server.url, environ=kw.pop("environ", {}), **kw)


class Events(list):  # type: ignore[type-arg]
    def __call__(self, event: Event) -> None:
        self.append(event)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self if isinstance(e, cls)]

    def codes(self) -> list[str]:
        return [e.code for e in self.of(WarningEvent)]


async def test_success_posts_our_ids_and_reads_outputs_from_history(comfy_server: Any) -> None:
    events = Events()
    result = await submit_and_wait(settings_for(comfy_server), graph(), events, options=FAST)
    assert result.outcome == "success" and result.state.confirmed
    assert str(uuid.UUID(result.prompt_id)) == result.prompt_id  # canonical lowercase uuid4
    assert [f.filename for f in result.files] == ["accept_00001_.txt"]
    assert [e.value for e in events.of(Progress)] == [1, 2, 3, 4, 5]
    reqs = comfy_server.requests()
    ws = [r for r in reqs if r.websocket]
    posts = [r for r in reqs if r.method == "POST" and r.path == "/prompt"]
    assert len(ws) == 1 and len(posts) == 1
    assert ws[0].header("Origin") is None
    assert ws[0].time < posts[0].time  # socket first, then the POST
    client_id = dict(pair.split("=", 1) for pair in ws[0].query.split("&"))["clientId"]
    assert len(client_id) == 32
    history = http_get(f"{comfy_server.url}/history/{result.prompt_id}").json()[result.prompt_id]
    assert history["prompt"][3] == {"client_id": client_id}  # no extra_pnginfo sent


async def test_extra_pnginfo_without_workflow_is_never_sent(comfy_server: Any) -> None:
    events = Events()
    result = await submit_and_wait(settings_for(comfy_server), graph(1), events, options=FAST,
                                   extra_data={"extra_pnginfo": {"note": "x"}})
    assert result.outcome == "success" and "extra_pnginfo_dropped" in events.codes()
    history = http_get(f"{comfy_server.url}/history/{result.prompt_id}").json()[result.prompt_id]
    assert "extra_pnginfo" not in history["prompt"][3]


async def test_runtime_failure_is_failed_outcome(comfy_server: Any) -> None:
    result = await submit_and_wait(settings_for(comfy_server), graph(2, fail=True), Events(), options=FAST)
    assert result.outcome == "failed"
    assert "AcceptFail #3: RuntimeError: boom" in result.message


async def test_rejection_carries_every_node_error(comfy_server: Any) -> None:
    with pytest.raises(PromptRejected) as info:
        await submit_and_wait(settings_for(comfy_server), graph(20000), Events(), options=FAST)
    err = info.value
    assert exit_code_for(err) == 4 and err.error_type == "prompt_outputs_failed_validation"
    [node_error] = err.node_errors
    assert (node_error.node, node_error.class_type, node_error.input_name, node_error.received) == (
        "1", "AcceptSlowSteps", "steps", 20000)
    assert node_error.limit == "max 10000" and node_error.dependent_outputs == ("2",)
    text = str(err).splitlines()
    assert text[0] == ("prompt rejected (HTTP 400, prompt_outputs_failed_validation): "
                       "Prompt outputs failed validation")
    assert text[1] == '  node 1 AcceptSlowSteps "Slow steps" (blocks output 2):'
    assert text[2].startswith("    - Value 20000 bigger than max of 10000: steps")


@pytest.mark.parametrize(("mode", "needle"), [("500", "server error (HTTP 500)"),
                                              ("413", "HTTP 413"), ("malformed", "malformed JSON")])
async def test_bad_answers_to_post_prompt_are_protocol_errors(comfy_server: Any, mode: str, needle: str) -> None:
    comfy_server.control("fail_next", route="/prompt", method="POST", mode=mode)
    with pytest.raises(ProtocolError) as info:
        await submit_and_wait(settings_for(comfy_server), graph(1), Events(), options=FAST)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert exit_code_for(info.value) == 5


async def test_unreachable_server() -> None:
    settings = ServerSettings.resolve("http://127.0.0.1:9", environ={})
    with pytest.raises(ServerUnreachable) as info:
        await submit_and_wait(settings, graph(1), Events(), options=FAST)
    assert "cannot reach http://127.0.0.1:9" in str(info.value)


async def test_finished_before_anyone_watched_is_reported_from_history(comfy_server: Any) -> None:
    pid = str(uuid.uuid4())
    # posted with a clientId whose socket never connects: no event is ever delivered
    r = http_post(f"{comfy_server.url}/prompt", json={"prompt": graph(1), "client_id": "nobody", "prompt_id": pid})
    assert r.status_code == 200
    for _ in range(200):
        if http_get(f"{comfy_server.url}/history/{pid}").json():
            break
        await asyncio.sleep(0.05)
    events = Events()
    result = await watch_prompt(settings_for(comfy_server), pid, events, options=FAST)
    assert result.outcome == "success" and [f.filename for f in result.files] == ["accept_00001_.txt"]


async def test_watch_attaches_to_a_running_prompt(comfy_server: Any) -> None:
    pid = str(uuid.uuid4())
    http_post(f"{comfy_server.url}/prompt", json={"prompt": graph(30, 0.03), "client_id": uuid.uuid4().hex,
                                                   "prompt_id": pid}).raise_for_status()
    events = Events()
    result = await watch_prompt(settings_for(comfy_server), pid, events, options=FAST)
    assert result.outcome == "success" and result.files
    assert events.of(Progress)  # the socket reused the prompt's clientId: live progress arrived


async def test_websocket_drop_reconnects_with_same_client_id(comfy_server: Any) -> None:
    comfy_server.control("drop_ws", after_progress=3)
    events = Events()
    result = await submit_and_wait(settings_for(comfy_server), graph(40, 0.03), events, options=FAST)
    assert result.outcome == "success" and [f.filename for f in result.files] == ["accept_00001_.txt"]
    assert "connection_lost" in events.codes() and "reconnected" in events.codes()
    handshakes = [r.query for r in comfy_server.requests() if r.websocket]
    assert len(handshakes) >= 2 and len(set(handshakes)) == 1


async def test_silent_socket_is_backed_up_by_polling(comfy_server: Any) -> None:
    comfy_server.control("silence", after_progress=2)
    events = Events()
    result = await submit_and_wait(settings_for(comfy_server), graph(10, 0.02), events, options=FAST)
    assert result.outcome == "success" and result.files
    assert max(e.value for e in events.of(Progress)) < 10  # the socket never told us the end
    assert any(r.path.startswith("/history/") for r in comfy_server.requests())


async def test_server_restart_means_prompt_lost_not_a_hang(comfy_server: Any) -> None:
    events = Events()
    restarted: list[asyncio.Task[Any]] = []

    async def restart() -> None:
        async with httpx.AsyncClient() as http:
            await http.post(f"{comfy_server.url}/__test__/control", json={"kind": "restart"})

    def sink(event: Event) -> None:
        events(event)
        if isinstance(event, Progress) and not restarted:
            restarted.append(asyncio.ensure_future(restart()))

    with pytest.raises(PromptLost) as info:
        await submit_and_wait(settings_for(comfy_server), graph(500, 0.02), sink, options=FAST)
    assert exit_code_for(info.value) == 5 and "is lost" in str(info.value)


async def test_overall_timeout_is_opt_in(comfy_server: Any) -> None:
    opts = WaitOptions(poll_interval=0.3, timeout=0.5)
    with pytest.raises(WaitTimeout) as info:
        await submit_and_wait(settings_for(comfy_server), graph(500, 0.02), Events(), options=opts)
    assert "gave up waiting after 0.5 s" in str(info.value)
    pid = str(info.value).split("prompt ")[1].split()[0]
    assert (await cancel(settings_for(comfy_server), pid))[0] == "interrupted"


async def test_cancel_pending_then_running(comfy_server: Any) -> None:
    settings = settings_for(comfy_server)
    first = await submit_and_wait(settings, graph(500, 0.02), Events(), wait=False)
    second = await submit_and_wait(settings, graph(1), Events(), wait=False)
    events = Events()
    await asyncio.sleep(0.2)
    assert await cancel(settings, second.prompt_id) == (
        "deleted", f"removed pending prompt {second.prompt_id} from the queue")
    action, _ = await cancel(settings, first.prompt_id)
    assert action == "interrupted"
    result = await watch_prompt(settings, first.prompt_id, events, options=FAST)
    assert result.outcome == "interrupted"
    assert http_get(f"{comfy_server.url}/history/{second.prompt_id}").json() == {}
    with pytest.raises(PromptLost):
        await cancel(settings, second.prompt_id)
    assert (await cancel(settings, first.prompt_id))[0] == "none"


async def test_interrupt_by_someone_else_ends_run_as_interrupted(comfy_server: Any) -> None:
    settings = settings_for(comfy_server)
    tasks: list[asyncio.Task[Any]] = []

    def sink(event: Event) -> None:
        if isinstance(event, Progress) and not tasks:
            tasks.append(asyncio.ensure_future(cancel(settings, event.prompt_id or "")))

    result = await submit_and_wait(settings, graph(500, 0.02), sink, options=FAST)
    assert result.outcome == "interrupted"
    assert (await tasks[0])[0] == "interrupted"


async def test_cancelling_the_wait_cancels_our_running_prompt(comfy_server: Any) -> None:
    settings = settings_for(comfy_server)
    events = Events()
    started = asyncio.Event()

    def sink(event: Event) -> None:
        events(event)
        if isinstance(event, Progress):
            started.set()

    task = asyncio.ensure_future(submit_and_wait(settings, graph(500, 0.02), sink, options=FAST))
    await started.wait()
    task.cancel()
    with pytest.raises(Cancelled) as info:
        await task
    pid = events.of(Queued)[0].prompt_id
    assert str(info.value) == f"interrupted running prompt {pid}"
    body = http_get(f"{comfy_server.url}/history/{pid}").json()
    assert body[pid]["status"]["messages"][-1][0] == "execution_interrupted"


async def test_big_binary_frames_do_not_break_the_socket(comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("binary_frame", event_type=4, size=3 * 1024 * 1024, after_progress=1)
    events = Events()
    opts = WaitOptions(poll_interval=0.3, previews_dir=tmp_path / "previews")
    result = await submit_and_wait(settings_for(comfy_server), graph(5), events, options=opts)
    assert result.outcome == "success" and "connection_lost" not in events.codes()
    saved = list((tmp_path / "previews").iterdir())
    assert len(saved) == 1 and saved[0].read_bytes().startswith(b"\x89PNG")


async def test_downloads_never_overwrite_and_skip_identical(comfy_server: Any, tmp_path: Path) -> None:
    settings = settings_for(comfy_server)
    result = await submit_and_wait(settings, graph(1), Events(), options=FAST)
    dest = tmp_path / "out"
    events = Events()
    assert await download_outputs(settings, result.files, dest, events, result.prompt_id) == []
    assert await download_outputs(settings, result.files, dest, events, result.prompt_id) == []
    assert [d.status for d in events.of(Download)] == ["saved", "same"]
    (dest / "accept_00001_.txt").write_text("local edit")
    await download_outputs(settings, result.files, dest, events, result.prompt_id)
    assert (dest / "accept_00001_.txt").read_text() == "local edit"
    assert (dest / "accept_00001_ (1).txt").read_text() == "hello: finished 1 steps"
    assert not [p for p in dest.iterdir() if p.name.endswith((".part", ".etag"))]


async def test_download_resumes_a_partial_file(comfy_server: Any, tmp_path: Path) -> None:
    settings = settings_for(comfy_server)
    result = await submit_and_wait(settings, graph(1), Events(), options=FAST)
    dest = tmp_path / "out"
    dest.mkdir()
    etag = http_get(f"{comfy_server.url}/view", params={"filename": "accept_00001_.txt", "type": "output",
                                                          "subfolder": ""}).headers.get("ETag")
    (dest / ".accept_00001_.txt.part").write_bytes(b"hello: ")
    if etag:
        (dest / ".accept_00001_.txt.part.etag").write_text(etag)
    events = Events()
    assert await download_outputs(settings, result.files, dest, events, result.prompt_id) == []
    assert (dest / "accept_00001_.txt").read_text() == "hello: finished 1 steps"
    if etag:
        assert events.of(Download)[0].status == "resumed"


async def test_hostile_output_filename_is_refused(comfy_server: Any, tmp_path: Path) -> None:
    comfy_server.control("hostile_filename", filename="../../x")
    settings = settings_for(comfy_server)
    result = await submit_and_wait(settings, graph(1), Events(), options=FAST)
    assert [f.filename for f in result.files] == ["../../x"]
    events = Events()
    dest = tmp_path / "a" / "b" / "out"
    problems = await download_outputs(settings, result.files, dest, events, result.prompt_id)
    assert len(problems) == 1 and "unsafe output name" in problems[0]
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path / "x").exists()


async def test_auth_headers_on_http_and_websocket(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(auth_token="s3cret-token")
    with pytest.raises((ServerUnreachable, ProtocolError)) as info:
        await submit_and_wait(settings_for(server), graph(1), Events(), options=FAST)
    assert "401" in str(info.value)
    settings = settings_for(server, environ={"LORAWF_TOKEN": "s3cret-token"}, headers=["X-Extra: yes"])
    result = await submit_and_wait(settings, graph(1), Events(), options=FAST)
    assert result.outcome == "success"
    ours = [r for r in server.requests() if not r.path.startswith("/__test__")][-6:]
    assert any(r.websocket for r in ours)
    for r in ours:
        if r.header("X-Extra"):
            assert r.header("Authorization") == "Bearer s3cret-token"
    ws = [r for r in server.requests() if r.websocket and r.header("X-Extra")]
    assert ws and ws[-1].header("Authorization") == "Bearer s3cret-token"


async def test_object_info_and_system_stats(comfy_server: Any) -> None:
    info = await fetch_object_info(settings_for(comfy_server))
    assert "AcceptSlowSteps" in info
    stats = await fetch_system_stats(settings_for(comfy_server))
    assert "comfyui_version" in stats["system"]


async def test_downloads_overlap_a_few_at_a_time_and_each_arrives_whole(comfy_server: Any, tmp_path: Path) -> None:
    refs = []
    for i in range(10):
        (comfy_server.root / "output" / f"img_{i}.png").write_bytes(bytes([i]) * (100_000 + i))
        refs.append(OutputFile("9", "images", f"img_{i}.png", "", "output"))
    comfy_server.control("stall", route="/view", method="GET", seconds=0.2, count=10)  # a long round trip
    events = Events()
    assert await download_outputs(settings_for(comfy_server), refs, tmp_path / "out", events, "p", jobs=3) == []
    assert comfy_server.state()["in_flight_max"]["/view"] == 3
    assert sorted(d.filename for d in events.of(Download)) == sorted(r.filename for r in refs)
    for i in range(10):
        assert (tmp_path / "out" / f"img_{i}.png").read_bytes() == bytes([i]) * (100_000 + i)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


async def test_outputs_bound_for_one_local_path_are_fetched_in_turn_without_overwriting(
        comfy_server: Any, tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (comfy_server.root / "output" / sub).mkdir()
        (comfy_server.root / "output" / sub / "lora.safetensors").write_bytes(sub.encode() * 50_000)
    refs = [OutputFile("9", "files", "lora.safetensors", sub, "output") for sub in ("a", "b")]
    comfy_server.control("stall", route="/view", method="GET", seconds=0.2, count=2)
    dest = tmp_path / "out"
    events = Events()
    same = dest / "lora.safetensors"
    assert await download_outputs(settings_for(comfy_server), refs, dest, events, "p",
                                  local_for=lambda ref: same) == []
    assert comfy_server.state()["in_flight_max"]["/view"] == 1  # one .part file, one writer at a time
    assert sorted(p.read_bytes()[:1] for p in dest.iterdir()) == [b"a", b"b"]  # the second got a free name
    assert sorted(p.name for p in dest.iterdir()) == ["lora (1).safetensors", "lora.safetensors"]


async def test_a_partial_file_that_is_already_whole_is_put_in_place(comfy_server: Any, tmp_path: Path) -> None:
    """Stopped between the last byte and the rename: the resume is answered 416 and nothing is fetched again."""
    content = b"the whole LoRA" * 1000
    (comfy_server.root / "output" / "lora.safetensors").write_bytes(content)
    dest = tmp_path / "out"
    dest.mkdir()
    etag = http_get(f"{comfy_server.url}/view", params={"filename": "lora.safetensors", "type": "output",
                                                          "subfolder": ""}).headers.get("ETag")
    assert etag, "the test server answers /view with an ETag, as aiohttp's FileResponse does"
    (dest / ".lora.safetensors.part").write_bytes(content)
    (dest / ".lora.safetensors.part.etag").write_text(etag)
    events = Events()
    ref = OutputFile("9", "files", "lora.safetensors", "", "output")
    assert await download_outputs(settings_for(comfy_server), [ref], dest, events, "p") == []
    assert (dest / "lora.safetensors").read_bytes() == content
    assert [d.status for d in events.of(Download)] == ["resumed"] and not events.of(WarningEvent)
    assert sorted(p.name for p in dest.iterdir()) == ["lora.safetensors"]
