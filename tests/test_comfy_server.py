"""The fake ComfyUI server (tests/comfy_server) against the recordings of a real ComfyUI 0.3.64.

Every test talks to a real server process over HTTP and websocket on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.comfy_server.plugin import ComfyServer

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "fixtures" / "transcripts"
RECORDED_ROOT = "/srv/comfy"


def load(name: str) -> Any:
    return json.loads((TRANSCRIPTS / name).read_text(encoding="utf-8"))


# --- helpers ------------------------------------------------------------------------------------------


class Socket:
    """A websocket client that keeps every frame it read."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[Any] = []

    @classmethod
    async def connect(cls, server: ComfyServer, client_id: str, path: str = "/ws", **kw: Any) -> Socket:
        ws = await websockets.connect(f"{server.ws_url}{path}?clientId={client_id}", max_size=None, **kw)
        return cls(ws)

    async def recv(self, timeout: float = 15.0) -> Any:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = json.loads(raw) if isinstance(raw, str) else raw
        self.frames.append(frame)
        return frame

    async def until_done(self, prompt_id: str, timeout: float = 30.0) -> list[Any]:
        """Read until ``executing {node: null}`` for ``prompt_id``; returns the frames read."""
        start = len(self.frames)
        while True:
            frame = await self.recv(timeout)
            if (
                isinstance(frame, dict)
                and frame["type"] == "executing"
                and frame["data"].get("node") is None
                and frame["data"].get("prompt_id") == prompt_id
            ):
                return self.frames[start:]

    async def quiet(self, seconds: float = 0.3) -> list[Any]:
        """Frames that arrive within ``seconds`` (used to show that nothing more comes)."""
        got = []
        try:
            while True:
                got.append(await self.recv(seconds))
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            return got

    async def close(self) -> None:
        await self.ws.close()


def normalize(obj: Any, ids: dict[str, str]) -> Any:
    """Replace ids by placeholders and timestamps by ``<ts>`` so runs can be compared."""
    if isinstance(obj, dict):
        return {ids.get(k, k): ("<ts>" if k == "timestamp" else normalize(v, ids)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalize(v, ids) for v in obj]
    if isinstance(obj, str):
        return ids.get(obj, obj)
    return obj


def recorded_frames(transcript: dict[str, Any], key: str = "messages") -> list[Any]:
    return [r["msg"] for r in transcript[key] if r.get("kind") == "text"]


async def post_prompt(client: httpx.AsyncClient, prompt: dict[str, Any], client_id: str, **extra: Any) -> Any:
    r = await client.post("/prompt", json={"prompt": prompt, "client_id": client_id, **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def run_recorded(server: ComfyServer, name: str) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """Run a recorded transcript's prompt like the recording client did; returns (recording, frames, ids)."""
    rec = load(name)
    client_id = str(uuid.uuid4())
    sock = await Socket.connect(server, client_id)
    await sock.recv()
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer = await post_prompt(client, rec["prompt"], client_id)
        frames = [sock.frames[0], *await sock.until_done(answer["prompt_id"])]
    await sock.close()
    ids = {answer["prompt_id"]: "<pid>", client_id: "<cid>"}
    rec_ids = {rec["prompt_id"]: "<pid>", rec["client_id"]: "<cid>"}
    return (
        normalize(rec, rec_ids),
        normalize(frames, ids),
        {"prompt_id": answer["prompt_id"], "answer": answer},
    )


# --- startup, websocket basics --------------------------------------------------------------------------


async def test_first_frame_is_status_with_sid_on_both_paths(comfy_server: ComfyServer) -> None:
    for path in ("/ws", "/api/ws"):
        cid = str(uuid.uuid4())
        sock = await Socket.connect(comfy_server, cid, path)
        assert await sock.recv() == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": cid},
        }
        await sock.close()
    # without clientId the sid is uuid4().hex
    ws = await websockets.connect(f"{comfy_server.ws_url}/ws")
    first = json.loads(await ws.recv())
    await ws.close()
    assert len(first["data"]["sid"]) == 32 and "-" not in first["data"]["sid"]


async def test_feature_flags_answered_only_for_first_message(comfy_server: ComfyServer) -> None:
    sock = await Socket.connect(comfy_server, "ff")
    await sock.recv()
    await sock.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    assert await sock.recv() == {
        "type": "feature_flags",
        "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
    }
    await sock.ws.send(json.dumps({"type": "feature_flags", "data": {}}))
    assert await sock.quiet(0.3) == []
    await sock.close()


# --- recorded runs --------------------------------------------------------------------------------------


async def test_success_run_matches_recording(comfy_server: ComfyServer) -> None:
    # the recorded server already had accept_00001_.txt, hence accept_00002_.txt
    (comfy_server.root / "output" / "accept_00001_.txt").write_text("earlier", encoding="utf-8")
    rec, frames, info = await run_recorded(comfy_server, "transcript_success.json")
    assert frames == recorded_frames(rec)
    assert info["answer"]["number"] == 0 and info["answer"]["node_errors"] == {}
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        hist = (await client.get(f"/history/{info['prompt_id']}")).json()
        recorded = load("history_success.json")
        rec_pid = next(iter(recorded))
        client_id = hist[info["prompt_id"]]["prompt"][3]["client_id"]
        assert normalize(hist, {info["prompt_id"]: "<pid>", client_id: "<cid>"}) == normalize(
            recorded, {rec_pid: "<pid>", recorded[rec_pid]["prompt"][3]["client_id"]: "<cid>"}
        )
        view = load("view_success.json")
        r = await client.get(view["request"])
        assert r.status_code == view["status"]
        assert r.headers["content-type"] == view["content_type"]
        assert r.headers["content-disposition"] == view["content_disposition"]
        assert r.text == view["body"]


async def test_error_run_matches_recording(comfy_server: ComfyServer) -> None:
    rec, frames, info = await run_recorded(comfy_server, "transcript_error.json")
    expected = recorded_frames(rec)
    assert [f["type"] for f in frames] == [f["type"] for f in expected]
    err, rec_err = frames[-3]["data"], expected[-3]["data"]
    assert err["traceback"] and all(isinstance(line, str) for line in err["traceback"])
    assert {**err, "traceback": None} == {**rec_err, "traceback": None}
    assert frames[:-3] == expected[:-3] and frames[-2:] == expected[-2:]
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        entry = (await client.get(f"/history/{info['prompt_id']}")).json()[info["prompt_id"]]
    recorded = next(iter(load("history_error.json").values()))
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in recorded["status"]["messages"]]
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert entry["status"]["messages"][-1][1]["exception_message"] == "boom\n"


async def test_interrupt_run_matches_recording(comfy_server: ComfyServer) -> None:
    rec = load("transcript_interrupt.json")
    client_id = str(uuid.uuid4())
    sock = await Socket.connect(comfy_server, client_id)
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, rec["prompt"], client_id))["prompt_id"]
        while True:
            frame = await sock.recv()
            if frame["type"] == "progress" and frame["data"]["value"] == 5:
                r = await client.post("/interrupt", json={})
                assert (r.status_code, r.text, r.headers.get("content-type")) == (200, "", None)
                break
        await sock.until_done(pid)
        entry = (await client.get(f"/history/{pid}")).json()[pid]
    await sock.close()
    frames = normalize(sock.frames, {pid: "<pid>", client_id: "<cid>"})
    expected = normalize(recorded_frames(rec), {rec["prompt_id"]: "<pid>", rec["client_id"]: "<cid>"})
    assert frames == expected
    recorded = next(iter(load("history_interrupt.json").values()))
    assert entry["prompt"][0] == 0 and recorded["prompt"][0] == 2  # numbers differ: fresh server
    entry["prompt"][0] = 2
    assert normalize(entry, {pid: "<pid>", client_id: "<cid>"}) == normalize(
        recorded, {rec["prompt_id"]: "<pid>", rec["client_id"]: "<cid>"}
    )


async def test_image_run_matches_recording_and_writes_png(comfy_server: ComfyServer) -> None:
    rec, frames, _info = await run_recorded(comfy_server, "transcript_image.json")
    assert frames == recorded_frames(rec)
    png = comfy_server.root / "output" / "accept_img_00001_.png"
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        r = await client.get("/view", params={"filename": png.name, "subfolder": "", "type": "output"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == png.read_bytes()
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (64, 64) and img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


# --- POST /prompt validation ----------------------------------------------------------------------------


def _strip_tracebacks(body: Any) -> Any:
    body = copy.deepcopy(body)
    for node in body.get("node_errors", {}).values():
        for error in node["errors"]:
            if "traceback" in error.get("extra_info", {}):
                error["extra_info"]["traceback"] = "<tb>"
    return body


async def test_rejected_prompts_match_recording_and_consume_numbers(comfy_server: ComfyServer) -> None:
    cases = load("invalid_prompt_response.json")
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        for name, case in cases.items():
            r = await client.post("/prompt", json=case["request_body"])
            assert r.status_code == case["status"], name
            assert r.headers["content-type"] == "application/json; charset=utf-8"
            assert _strip_tracebacks(r.json()) == _strip_tracebacks(case["body"]), name
        flux = load("fluxtrainer_invalid_model_response.json")
        r = await client.post("/prompt", json={"prompt": flux["request_body"], "client_id": "flux-invalid"})
        assert (r.status_code, r.json()) == (flux["status"], flux["body"])
        # seven rejected requests used numbers 0..6; nothing was queued
        ok = await post_prompt(client, load("transcript_success.json")["prompt"], "x")
        assert ok["number"] == 7


async def test_client_prompt_id_and_partial_targets_are_honoured(comfy_server: ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "hi"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "3": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "p"}},
    }
    pid = str(uuid.uuid4())
    sock = await Socket.connect(comfy_server, "c1")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        answer = await post_prompt(client, prompt, "c1", prompt_id=pid, partial_execution_targets=["2"])
        assert answer == {"prompt_id": pid, "number": 0, "node_errors": {}}
        frames = await sock.until_done(pid)
        entry = (await client.get(f"/history/{pid}")).json()[pid]
    await sock.close()
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"] == ["1", "2", None]
    assert entry["prompt"][4] == ["2"]
    assert entry["outputs"] == {"2": {"text": ["hi"]}}
    assert not list((comfy_server.root / "output").glob("p_*"))


async def test_partly_valid_prompt_runs_valid_outputs_and_reports_node_errors(
    comfy_server: ComfyServer,
) -> None:
    oldest = load("history_list.json")["max_items=1&offset=0"]["body"]
    entry = next(iter(oldest.values()))
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        r = await client.post("/prompt", json={"prompt": entry["prompt"][2], "client_id": "pf"})
        assert r.status_code == 200
        body = r.json()
        assert list(body["node_errors"]) == ["3"]
        assert body["node_errors"]["3"]["errors"][0]["type"] == "value_not_in_list"
        for _ in range(200):
            hist = (await client.get(f"/history/{body['prompt_id']}")).json()
            if hist:
                break
            await asyncio.sleep(0.02)
    got = hist[body["prompt_id"]]
    assert got["prompt"][4] == entry["prompt"][4] == ["2"]
    assert got["outputs"] == entry["outputs"]
    assert got["status"]["status_str"] == "success"


async def test_malformed_json_body_is_aiohttp_500(comfy_server: ComfyServer) -> None:
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        r = await client.post("/prompt", content=b"{not json")
        assert r.status_code == 500
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.text == "500 Internal Server Error\n\nServer got itself in trouble"
        # the counter only moves once the body parsed
        ok = await post_prompt(client, load("transcript_success.json")["prompt"], "x")
        assert ok["number"] == 0


async def test_body_over_100_mib_gets_413_and_nothing_is_queued(comfy_server: ComfyServer) -> None:
    rec = load("large_body.json")
    body = b'{"prompt": {"1": {"class_type": "PrimitiveString", "inputs": {"value": "' + b"x" * (
        105 * 1024 * 1024
    )
    body += b'"}}}}'
    async with httpx.AsyncClient(base_url=comfy_server.url, timeout=60) as client:
        try:
            r = await client.post("/prompt", content=body, headers={"Content-Type": "application/json"})
        except httpx.TransportError:  # the server may answer before reading everything
            pytest.skip("connection reset before the 413 could be read")
        assert r.status_code == rec["status"]
        assert r.headers["content-type"] == rec["content_type"]
        assert r.text == rec["body_first_300"]
        assert (await client.get("/queue")).json() == rec["queue_after"]


async def test_smaller_max_upload_size_option(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(max_upload_size=1)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/features")).json() == {
            "supports_preview_metadata": True,
            "max_upload_size": 1048576.0,
        }
        r = await client.post("/prompt", content=b"x" * (2 * 1024 * 1024))
        assert (r.status_code, r.text) == (413, "Maximum request body size 1048576 exceeded.")


# --- queue, interrupt, history ----------------------------------------------------------------------------


def _slow_prompt(text: str, prefix: str, steps: int = 200, delay: float = 0.05) -> dict[str, Any]:
    return {
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": steps, "delay": delay, "text": text}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": prefix}},
    }


def _without_progress(frames: list[Any]) -> list[Any]:
    return [f for f in frames if not (isinstance(f, dict) and f["type"] in ("progress", "progress_state"))]


async def test_queue_delete_and_targeted_interrupt_match_recording(comfy_server: ComfyServer) -> None:
    rec = load("queue_states.json")
    comfy_server.control("config", delay_scale=0.1)  # 200 steps x 0.05 s -> 1 s per prompt
    labels: dict[str, str] = {}
    socks = []
    for i, client in enumerate(rec["transcripts"], 1):
        cid = str(uuid.uuid4())
        labels[cid] = f"<c{i}>"
        labels[client["client_id"]] = f"<c{i}>"
        labels[client["prompt_id"]] = f"<p{i}>"
        sock = await Socket.connect(comfy_server, cid)
        await sock.recv()
        socks.append((cid, sock))
    answers: list[Any] = []
    pids: list[str] = []
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:

        async def call(method: str, path: str, body: Any = None) -> None:
            r = await client.request(method, path, json=body)
            answers.append([f"{method} {path}", r.status_code, r.headers.get("content-type"), r.text])

        await call("GET", "/queue")
        for i, (cid, _sock) in enumerate(socks, 1):
            prompt = rec["transcripts"][i - 1]["prompt"]
            r = await client.post("/prompt", json={"prompt": prompt, "client_id": cid})
            pids.append(r.json()["prompt_id"])
            labels[pids[-1]] = f"<p{i}>"
            answers.append(["POST /prompt", r.status_code, r.headers.get("content-type"), r.text])
        await call("GET", "/queue")
        await call("POST", "/queue", {"delete": [pids[1]]})
        await call("GET", "/queue")
        await call("POST", "/interrupt", {"prompt_id": pids[2]})
        await call("GET", "/queue")
        await call("POST", "/interrupt", {"prompt_id": pids[0]})
        await socks[2][1].until_done(pids[2])
        await call("GET", "/queue")
        for pid in pids:
            await call("GET", f"/history/{pid}")
    for _cid, sock in socks:
        await sock.quiet(0.3)
        await sock.close()

    def shape(action: dict[str, Any] | list[Any]) -> list[Any]:
        if isinstance(action, dict):
            request, status, ctype, body = (
                action["request"],
                action["status"],
                action["content_type"],
                action["body"],
            )
        else:
            request, status, ctype, text = action
            body = json.loads(text) if ctype and "json" in ctype else text
        body = normalize(body, labels)
        if isinstance(body, dict) and "queue_running" in body:
            body = {k: [[labels.get(x[1])] for x in v] for k, v in body.items()}
        if isinstance(body, dict) and "number" in body:
            body = {**body, "number": None}
        if isinstance(body, dict) and body and next(iter(body)).startswith("<p"):
            entry = next(iter(body.values()))
            body = {"status": entry["status"]["status_str"], "outputs": sorted(entry["outputs"])}
        request = " ".join(labels.get(p, p) for p in request.replace("/history/", "/history/ ").split(" "))
        return [request.split(" ")[0], status, ctype, body]

    recorded_actions = [shape(a) for a in rec["actions"]]
    assert [shape(a) for a in answers] == recorded_actions
    for (_cid, sock), recorded in zip(socks, rec["transcripts"]):
        got = normalize(_without_progress(sock.frames), labels)
        want = normalize(_without_progress(recorded_frames(recorded)), labels)
        assert got == want, (recorded["label"], json.dumps(got), json.dumps(want))


async def test_finish_before_connect_replays_nothing(comfy_server: ComfyServer) -> None:
    rec = load("finish_before_connect.json")
    cid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, rec["prompt"], cid))["prompt_id"]
        for _ in range(500):
            hist = (await client.get(f"/history/{pid}")).json()
            if hist:
                break
            await asyncio.sleep(0.01)
    sock = await Socket.connect(comfy_server, cid)
    frames = [await sock.recv(), *await sock.quiet(0.4)]
    await sock.close()
    assert normalize(frames, {cid: "<cid>"}) == normalize(recorded_frames(rec), {rec["client_id"]: "<cid>"})
    assert hist[pid]["status"]["status_str"] == "success"
    assert hist[pid]["outputs"]["2"]["files"] == [
        {"filename": "accept_early_00001_.txt", "subfolder": "", "type": "output"}
    ]


async def test_reconnect_midrun_gets_bare_executing_then_the_rest(comfy_server: ComfyServer) -> None:
    rec = load("reconnect_midrun.json")
    cid = str(uuid.uuid4())
    prompt = _slow_prompt("reconnect", "accept_reconnect", steps=60, delay=0.01)
    sock1 = await Socket.connect(comfy_server, cid)
    await sock1.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, prompt, cid))["prompt_id"]
        while (await sock1.recv())["type"] != "progress":
            pass
        await sock1.close()
        await asyncio.sleep(0.05)
        sock2 = await Socket.connect(comfy_server, cid)
        frames = await sock2.until_done(pid)
    await sock2.close()
    ids = {pid: "<pid>", cid: "<cid>"}
    rec_ids = {rec["prompt_id"]: "<pid>", rec["client_id"]: "<cid>"}
    messages = rec["messages"]
    second = messages[[i for i, m in enumerate(messages) if m.get("action") == "ws connect"][1] :]
    want = normalize(_without_progress([m["msg"] for m in second if m.get("kind") == "text"]), rec_ids)
    assert normalize(_without_progress(frames), ids) == want
    assert frames[1] == {"type": "executing", "data": {"node": "1"}}
    progress = [f["data"]["value"] for f in frames if f["type"] == "progress"]
    assert progress and progress[0] > 1 and progress[-1] == 60  # events in the gap are lost


async def test_reconnect_overlap_pop_race_starves_new_socket(comfy_server: ComfyServer) -> None:
    rec = load("reconnect_overlap.json")
    cid = str(uuid.uuid4())
    sock1 = await Socket.connect(comfy_server, cid)
    await sock1.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, _slow_prompt("overlap", "accept_overlap", 80, 0.01), cid))[
            "prompt_id"
        ]
        while (await sock1.recv())["type"] != "progress":
            pass
        sock2 = await Socket.connect(comfy_server, cid)
        assert normalize(await sock2.recv(), {cid: "<cid>"}) == normalize(
            recorded_frames(rec, "messages_socket2")[0], {rec["client_id"]: "<cid>"}
        )
        assert await sock2.recv() == {"type": "executing", "data": {"node": "1"}}
        assert (await sock2.recv())["type"] in ("progress_state", "progress")
        await sock1.close()
        drained = await sock2.quiet(0.1)  # frames already under way when socket 1 went
        assert not any(f["type"] == "executing" for f in drained)
        seen = len(sock2.frames)
        for _ in range(500):
            hist = (await client.get(f"/history/{pid}")).json()
            if hist:
                break
            await asyncio.sleep(0.01)
        assert hist[pid]["status"] == {**rec["history_status"], "messages": hist[pid]["status"]["messages"]}
        late = await sock2.quiet(0.3)
    await sock2.close()
    assert late == [] and len(sock2.frames) == seen
    assert not any(
        f["type"] in ("execution_success", "executing") and f["data"].get("node") is None
        for f in sock2.frames
    )


async def test_history_listing_matches_recorded_semantics(comfy_server: ComfyServer) -> None:
    rec = load("history_list.json")
    sock = await Socket.connect(comfy_server, "h")
    await sock.recv()
    pids = []
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        for i in range(3):
            pid = (await post_prompt(client, _slow_prompt(f"t{i}", "pf", 1, 0.0), "h"))["prompt_id"]
            await sock.until_done(pid)
            pids.append(pid)
        r = await client.get("/history", params={"max_items": 2})
        assert list(r.json()) == pids[1:]
        r = await client.get("/history", params={"max_items": 1, "offset": 0})
        assert list(r.json()) == pids[:1]
        assert len((await client.get("/history")).json()) == 3
        unknown = rec["unknown_uuid"]
        r = await client.get(unknown["request"].split(" ")[1])
        assert (r.status_code, r.json()) == (unknown["status"], unknown["body"])
        bad = rec["max_items=abc"]
        r = await client.get("/history", params=bad["params"])
        assert (r.status_code, r.headers["content-type"], r.text) == (
            bad["status"],
            bad["content_type"],
            bad["body"],
        )
        r = await client.post("/history", json={"delete": [pids[0]]})
        assert (r.status_code, r.text, r.headers.get("content-type")) == (200, "", None)
        assert list((await client.get("/history")).json()) == pids[1:]
        await client.post("/history", json={"clear": True})
        assert (await client.get("/history")).json() == {}
        r = await client.post("/free", json={"unload_models": True, "free_memory": True})
        assert (r.status_code, r.text) == (200, "")
    await sock.close()


async def test_queue_clear_and_global_interrupt(comfy_server: ComfyServer) -> None:
    sock = await Socket.connect(comfy_server, "q")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        first = (await post_prompt(client, _slow_prompt("a", "qa", 500, 0.01), "q"))["prompt_id"]
        await post_prompt(client, _slow_prompt("b", "qb", 5, 0.01), "q")
        await post_prompt(client, _slow_prompt("c", "qc", 5, 0.01), "q")
        queue = (await client.get("/queue")).json()
        assert [x[1] for x in queue["queue_running"]] == [first] and len(queue["queue_pending"]) == 2
        assert queue["queue_running"][0][3] == {"client_id": "q"} and queue["queue_running"][0][4] == ["2"]
        r = await client.post("/queue", json={"clear": True})
        assert (r.status_code, r.text) == (200, "")
        assert (await client.get("/queue")).json()["queue_pending"] == []
        r = await client.post("/interrupt", content=b"")  # empty body = global interrupt
        assert r.status_code == 200
        frames = await sock.until_done(first)
        assert [f["type"] for f in frames[-3:]] == ["execution_interrupted", "status", "executing"]
        assert (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
    await sock.close()


# --- files: /view, /upload/image, listings --------------------------------------------------------------

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
CAPTION = b"a photo of acpt, red square\n"


def _upload_bytes(size: int) -> bytes:
    """The recorded uploads are told apart by size: red 75, blue 77, green 76, caption 28, junk 14."""
    from tests.comfy_server.png import make_png

    return {
        75: make_png(8, 8, RED),
        77: make_png(8, 8, BLUE),
        76: make_png(8, 8, GREEN),
        28: CAPTION,
        14: b"\x00\x01\x02junk-bytes",
    }[size]


def multipart(fields: list[dict[str, Any]], quote: bool = False) -> tuple[bytes, str]:
    """A multipart/form-data body with full control over each part (httpx would normalise some)."""
    import urllib.parse

    boundary = "lorawf-test-boundary-7f3a"
    out = b""
    for field in fields:
        out += f"--{boundary}\r\n".encode()
        if "filename" in field:
            filename = urllib.parse.quote(field["filename"], safe="") if quote else field["filename"]
            out += (
                f'Content-Disposition: form-data; name="{field["name"]}"; filename="{filename}"\r\n'.encode()
            )
            out += f"Content-Type: {field['content_type']}\r\n\r\n".encode()
            out += _upload_bytes(field["size"]) + b"\r\n"
        else:
            out += (
                f'Content-Disposition: form-data; name="{field["name"]}"\r\n\r\n{field["value"]}\r\n'.encode()
            )
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


async def test_upload_image_cases_match_recording(comfy_server: ComfyServer) -> None:
    rec = load("upload_image.json")
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        for case in rec["cases"]:
            if "fields" in case:
                body, ctype = multipart(
                    case["fields"], quote="quote_fields=True" in case["client_filename_encoding"]
                )
            else:
                body, ctype = b'{"image": "img0.png"}', "application/json"
            r = await client.post("/upload/image", content=body, headers={"Content-Type": ctype})
            got = r.json() if r.status_code == 200 else r.text
            assert (r.status_code, r.headers.get("content-type"), got) == (
                case["status"],
                case["content_type"],
                case["body"],
            ), case["case"]
        for readback in rec["readback_via_view"]:
            r = await client.get(readback["request"].split(" ", 1)[1])
            assert (r.status_code, r.headers.get("content-type")) == (
                readback["status"],
                readback["content_type"],
            ), readback["request"]
            if "body" in readback:
                assert r.text == readback["body"]
            if "png_pixel0" in readback:
                from io import BytesIO

                from PIL import Image

                assert Image.open(BytesIO(r.content)).convert("RGB").getpixel((0, 0)) == tuple(
                    readback["png_pixel0"]
                )
        r = await client.get("/internal/files/input")
        assert sorted(r.json()) == sorted(rec["internal_files_input_after"]["body"])
    on_disk = {
        str(p.relative_to(comfy_server.root))
        for p in (comfy_server.root / "input").rglob("*")
        if p.is_file() and p.name != "example.png"
    }
    assert on_disk == {e["path"] for e in rec["on_disk_relative_to_comfy_root"]}


async def test_view_status_codes_and_headers_match_recording(comfy_server: ComfyServer) -> None:
    rec = load("view_errors.json")
    made = rec["output_file_made"]
    (comfy_server.root / "output" / "accept_00001_.txt").write_text("x", encoding="utf-8")
    sock = await Socket.connect(comfy_server, "v")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, _slow_prompt("view-sub", "accept_sub/view", 1, 0.0), "v"))[
            "prompt_id"
        ]
        frames = await sock.until_done(pid)
        executed = next(f for f in frames if f["type"] == "executed")
        assert executed["data"]["output"]["files"] == [made]
        for field in (
            [{"name": "image", "filename": "img0.png", "content_type": "image/png", "size": 75}],
            [{"name": "image", "filename": "img0.txt", "content_type": "text/plain", "size": 28}],
        ):
            body, ctype = multipart([*field, {"name": "subfolder", "value": "lorawf/ds1"}])
            assert (
                await client.post("/upload/image", content=body, headers={"Content-Type": ctype})
            ).status_code == 200
        for case in rec["cases"]:
            r = await client.get("/view", params=case["params"])
            assert r.status_code == case["status"], case["case"]
            assert len(r.content) == (case["body_length"] if r.status_code != 200 else len(r.content))
            for header in ("Content-Type", "Content-Disposition"):
                assert r.headers.get(header) == case["headers"].get(header), (case["case"], header)
            assert r.headers["Content-Length"] == str(len(r.content))
            for header in ("ETag", "Last-Modified"):
                assert (header in r.headers) == (header in case["headers"]), (case["case"], header)
            if "body" in case and r.status_code == 200:
                assert r.text == case["body"]
            if "body_first_bytes_hex" in case:
                assert r.content[:6].hex() == case["body_first_bytes_hex"][:12]
        # Range requests are served by aiohttp's FileResponse (clients may resume downloads)
        r = await client.get("/view", params={**made}, headers={"Range": "bytes=5-"})
        assert (r.status_code, r.text) == (206, "sub: finished 1 steps")
    await sock.close()


async def test_plain_get_routes_match_recording(comfy_server: ComfyServer) -> None:
    rec = load("folder_paths.json")
    root = str(comfy_server.root)
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        for route, answer in rec.items():
            r = await client.get(route)
            assert (r.status_code, r.headers.get("content-type")) == (
                answer["status"],
                answer["content_type"],
            ), route
            body = r.json()
            want = json.loads(json.dumps(answer["body"]).replace(RECORDED_ROOT, root))
            if route == "/system_stats":
                assert body["system"]["comfyui_version"] == "0.3.64"
                assert set(body["system"]) == set(want["system"]) and set(body["devices"][0]) == set(
                    want["devices"][0]
                )
            elif route == "/internal/files/output":
                assert body == ["_output_images_will_be_put_here"]
            elif route == "/internal/files/input":
                assert body == ["example.png"]
            else:
                assert body == want, route
        assert (
            await client.get("/api/internal/folder_paths")
        ).status_code == 404  # /internal is not mirrored
        for path in ("/api/queue", "/api/history", "/api/object_info/PreviewAny", "/api/system_stats"):
            assert (await client.get(path)).status_code == 200, path
        r = await client.get("/models/unet")
        assert r.status_code == 404
        assert (await client.get("/models/diffusion_models")).json() == ["flux1-dev.safetensors"]
        assert (await client.get("/models/text_encoders")).json() == [
            "clip_g.safetensors",
            "clip_l.safetensors",
            "t5xxl_fp16.safetensors",
        ]
        assert (await client.get("/models/checkpoints")).json() == [  # the SDXL and SD 3.5 templates' models
            "sd3.5_large.safetensors",
            "sd_xl_base_1.0.safetensors",
        ]
        # combo lists follow the model folders, as get_filename_list does
        (comfy_server.root / "models" / "loras" / "mine.safetensors").write_bytes(b"x")
        assert (await client.get("/models/loras")).json() == ["mine.safetensors"]
        info = (await client.get("/object_info/FluxKohyaInferenceSampler")).json()
        assert info["FluxKohyaInferenceSampler"]["input"]["required"]["lora_name"][0] == ["mine.safetensors"]
        full = (await client.get("/object_info")).json()
        recorded = load_bundled()["FluxTrainModelSelect"]  # the recorded server had no clip_g
        for name in ("clip_l", "t5"):
            recorded["input"]["required"][name][0] = ["clip_g.safetensors", *recorded["input"]["required"][name][0]]
        assert full["FluxTrainModelSelect"] == recorded
        select = full["SDXLModelSelect"]["input"]["required"]
        assert select["checkpoint"][0] == ["sd3.5_large.safetensors", "sd_xl_base_1.0.safetensors"]


def load_bundled() -> dict[str, Any]:
    from lorawf.comfy.schema import bundled_object_info

    return bundled_object_info()


async def test_origin_check_blocks_cross_origin_requests_to_loopback(comfy_server: ComfyServer) -> None:
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        r = await client.get("/prompt", headers={"Origin": "http://evil.example:8080"})
        assert (r.status_code, r.content) == (403, b"")
        r = await client.post("/prompt", json={}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = await client.get("/prompt", headers={"Origin": comfy_server.url})
        assert r.status_code == 200
        r = await client.options("/prompt", headers={"Origin": comfy_server.url})
        assert (r.status_code, r.content) == (200, b"")
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"{comfy_server.ws_url}/ws?clientId=o", origin="http://evil.example:1")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


# --- test-control faults ---------------------------------------------------------------------------------


async def test_fail_next_modes(comfy_server: ComfyServer) -> None:
    prompt = _slow_prompt("f", "f", 1, 0.0)
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        comfy_server.control("fail_next", mode="500")
        r = await client.post("/api/prompt", json={"prompt": prompt})
        assert (r.status_code, r.headers["content-type"], r.text) == (
            500,
            "text/plain; charset=utf-8",
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
        comfy_server.control("fail_next", mode="413")
        r = await client.post("/prompt", json={"prompt": prompt})
        assert (r.status_code, r.headers["content-type"], r.text) == (
            413,
            "text/plain; charset=utf-8",
            "Maximum request body size 104857600 exceeded.",
        )
        comfy_server.control("fail_next", mode="malformed")
        r = await client.post("/prompt", json={"prompt": prompt})
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            r.json()
        comfy_server.control("fail_next", route="/history", method="GET", status=502, count=2)
        assert (await client.get("/history")).status_code == 502
        assert (await client.get("/api/history")).status_code == 502
        assert (await client.get("/history")).status_code == 200
        comfy_server.control("fail_next", route="/queue", method="GET", mode="close")
        with pytest.raises(httpx.TransportError):
            await client.get("/queue")
        # none of the failed POSTs was queued or numbered
        assert (await client.post("/prompt", json={"prompt": prompt})).json()["number"] == 0


async def test_stall_delays_a_route(comfy_server: ComfyServer) -> None:
    comfy_server.control("stall", route="/queue", method="GET", seconds=3)
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/queue", timeout=0.3)
        assert (await client.get("/queue")).status_code == 200  # the stall was used up


async def test_drop_ws_cuts_the_connection_but_the_run_completes(comfy_server: ComfyServer) -> None:
    comfy_server.control("drop_ws", after_progress=3)
    sock = await Socket.connect(comfy_server, "d")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, _slow_prompt("d", "d", 10, 0.01), "d"))["prompt_id"]
        with pytest.raises(websockets.ConnectionClosedError) as info:
            while True:
                await sock.recv()
        assert info.value.rcvd is None  # no close frame: the TCP link just died
        assert [f["data"]["value"] for f in sock.frames if f["type"] == "progress"] == [1, 2, 3]
        for _ in range(500):
            hist = (await client.get(f"/history/{pid}")).json()
            if hist:
                break
            await asyncio.sleep(0.01)
    assert hist[pid]["status"]["status_str"] == "success"


async def test_silence_stops_events_but_history_arrives(comfy_server: ComfyServer) -> None:
    comfy_server.control("silence", after_progress=2)
    sock = await Socket.connect(comfy_server, "s")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, _slow_prompt("s", "s", 6, 0.01), "s"))["prompt_id"]
        for _ in range(500):
            hist = (await client.get(f"/history/{pid}")).json()
            if hist:
                break
            await asyncio.sleep(0.01)
        await sock.quiet(0.3)
    await sock.close()
    assert hist[pid]["status"]["status_str"] == "success"
    carrying = [f for f in sock.frames if "prompt_id" in f["data"]]
    assert [f["data"]["value"] for f in carrying if f["type"] == "progress"] == [1, 2]
    assert not any(f["type"] in ("execution_success", "executed") for f in carrying)
    assert sock.frames[-1] == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}


async def test_restart_forgets_queue_history_and_sockets(comfy_server: ComfyServer) -> None:
    sock = await Socket.connect(comfy_server, "r")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        done = (await post_prompt(client, _slow_prompt("a", "r", 1, 0.0), "r"))["prompt_id"]
        await sock.until_done(done)
        running = (await post_prompt(client, _slow_prompt("b", "r", 500, 0.01), "r"))["prompt_id"]
        await post_prompt(client, _slow_prompt("c", "r", 1, 0.0), "r")
        while (await sock.recv())["type"] != "progress":
            pass
        comfy_server.control("restart")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await sock.recv()
        assert (await client.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
        assert (await client.get("/history")).json() == {}
        assert (await client.get(f"/history/{running}")).json() == {}
        sock2 = await Socket.connect(comfy_server, "r")
        assert (await sock2.recv())["data"]["status"] == {"exec_info": {"queue_remaining": 0}}
        again = await post_prompt(client, _slow_prompt("d", "r", 1, 0.0), "r")
        assert again["number"] == 0
        await sock2.until_done(again["prompt_id"])
        await sock2.close()


async def test_restart_with_downtime_refuses_connections(comfy_server: ComfyServer) -> None:
    task = asyncio.get_running_loop().run_in_executor(
        None, lambda: comfy_server.control("restart", downtime=1.5)
    )
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/queue")
        await task
        assert (await client.get("/queue")).status_code == 200


@pytest.mark.parametrize("event_type", [1, 4])
async def test_large_binary_frames_during_a_run(comfy_server: ComfyServer, event_type: int) -> None:
    from io import BytesIO

    from PIL import Image

    size = 5 * 1024 * 1024
    comfy_server.control("binary_frame", event_type=event_type, size=size, after_progress=2)
    sock = await Socket.connect(comfy_server, "b")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, _slow_prompt("b", "b", 4, 0.0), "b"))["prompt_id"]
        frames = await sock.until_done(pid)
    await sock.close()
    binary = [f for f in frames if isinstance(f, bytes)]
    assert len(binary) == 1 and len(binary[0]) == size
    index = frames.index(binary[0])
    assert frames[index - 1]["type"] == "progress" and frames[index - 1]["data"]["value"] == 2
    (kind,) = struct.unpack(">I", binary[0][:4])
    assert kind == event_type
    if event_type == 1:
        assert struct.unpack(">I", binary[0][4:8]) == (2,)
        image = binary[0][8:]
    else:
        (meta_len,) = struct.unpack(">I", binary[0][4:8])
        meta = json.loads(binary[0][8 : 8 + meta_len])
        assert meta["prompt_id"] == pid and meta["image_type"] == "image/png"
        image = binary[0][8 + meta_len :]
    assert Image.open(BytesIO(image)).size == (8, 8)


@pytest.mark.parametrize("hostile", ["../../x", "/etc/passwd"])
async def test_hostile_output_filename_in_executed_and_history(
    comfy_server: ComfyServer, hostile: str
) -> None:
    comfy_server.control("hostile_filename", filename=hostile)
    sock = await Socket.connect(comfy_server, "h")
    await sock.recv()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "h"}},
    }
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, prompt, "h"))["prompt_id"]
        frames = await sock.until_done(pid)
        hist = (await client.get(f"/history/{pid}")).json()[pid]
        # an identical prompt would be served from the cache (with the cached hostile name): change it
        prompt2 = copy.deepcopy(prompt)
        prompt2["1"]["inputs"]["color"] = 1
        pid2 = (await post_prompt(client, prompt2, "h"))["prompt_id"]
        await sock.until_done(pid2)
        hist2 = (await client.get(f"/history/{pid2}")).json()[pid2]
    await sock.close()
    executed = next(f for f in frames if f["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["filename"] == hostile
    assert hist["outputs"]["2"]["images"][0]["filename"] == hostile
    assert hist2["outputs"]["2"]["images"][0]["filename"] == "h_00002_.png"  # one-shot


async def test_required_auth_on_http_and_ws_handshake(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(auth_token="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/queue")).status_code == 401
        assert (await client.get("/queue", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await client.get("/queue", headers=good)).status_code == 200
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"{server.ws_url}/ws?clientId=a")
    assert info.value.response.status_code == 401
    ws = await websockets.connect(f"{server.ws_url}/ws?clientId=a", additional_headers=good)
    assert json.loads(await ws.recv())["data"]["sid"] == "a"
    await ws.close()
    handshakes = [r for r in server.requests() if r.websocket]
    assert [r.header("authorization") for r in handshakes] == [None, "Bearer s3cret"]
    assert all(r.path == "/ws" for r in handshakes)
    # switched at run time through the control route
    server.control("require_auth", header="X-Api-Key", value="k")
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/queue", headers=good)).status_code == 401
        assert (await client.get("/queue", headers={"X-Api-Key": "k"})).status_code == 200
    server.control("require_auth")
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/queue")).status_code == 200


async def test_request_log_records_method_path_and_headers(comfy_server: ComfyServer) -> None:
    comfy_server.clear_requests()
    async with httpx.AsyncClient(base_url=comfy_server.url, headers={"X-Trace": "t1"}) as client:
        await client.get("/api/queue", params={"a": "1"})
    (entry,) = comfy_server.requests()
    assert (entry.method, entry.path, entry.query, entry.websocket) == ("GET", "/api/queue", "a=1", False)
    assert entry.header("x-trace") == "t1"


# --- FluxTrainer simulation ------------------------------------------------------------------------------


def _flux_graph(dataset_path: str, output_dir: str, max_steps: int) -> dict[str, Any]:
    graph: dict[str, Any] = load("fluxtrainer_prompt_api.json")
    graph = copy.deepcopy(graph)
    graph["3"]["inputs"]["dataset_path"] = dataset_path
    graph["5"]["inputs"]["output_dir"] = output_dir
    graph["5"]["inputs"]["max_train_steps"] = max_steps
    return graph


async def _upload_dataset(client: httpx.AsyncClient, subfolder: str, count: int) -> None:
    for i in range(count):
        for name, size, ctype in ((f"img{i}.png", 75, "image/png"), (f"img{i}.txt", 28, "text/plain")):
            body, content_type = multipart(
                [
                    {"name": "image", "filename": name, "content_type": ctype, "size": size},
                    {"name": "subfolder", "value": subfolder},
                    {"name": "type", "value": "input"},
                ]
            )
            r = await client.post("/upload/image", content=body, headers={"Content-Type": content_type})
            assert r.json() == {"name": name, "subfolder": subfolder, "type": "input"}


async def test_fluxtrainer_with_empty_placeholder_models_fails_as_recorded(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(models="empty")
    rec = load("transcript_fluxtrainer.json")
    cid = str(uuid.uuid4())
    sock = await Socket.connect(server, cid)
    await sock.recv()
    async with httpx.AsyncClient(base_url=server.url) as client:
        await _upload_dataset(client, "flux_test", 2)
        graph = copy.deepcopy(rec["prompt"])
        graph["3"]["inputs"]["dataset_path"] = str(server.root / "input" / "flux_test")
        graph["5"]["inputs"]["output_dir"] = str(server.root / "flux_trainer_output")
        pid = (await post_prompt(client, graph, cid))["prompt_id"]
        frames = await sock.until_done(pid)
        before = (await client.get("/internal/files/output")).json()
    await sock.close()
    expected = recorded_frames(rec)[1:]
    ids = {pid: "<pid>", cid: "<cid>"}
    rec_ids = {rec["prompt_id"]: "<pid>", rec["client_id"]: "<cid>"}
    assert [f["type"] for f in frames] == [f["type"] for f in expected]
    assert normalize(frames[:-3], ids) == normalize(expected[:-3], rec_ids)
    err, rec_err = frames[-3]["data"], expected[-3]["data"]
    for key in ("node_id", "node_type", "exception_message", "exception_type"):
        assert err[key] == rec_err[key], key
    assert sorted(err["executed"]) == sorted(rec_err["executed"])
    assert sorted(err["current_outputs"]) == sorted(rec_err["current_outputs"])
    assert list(err["current_inputs"]) == list(rec_err["current_inputs"])
    listing = sorted(os.listdir(server.root / "flux_trainer_output"))
    assert listing == load("fluxtrainer_history_error.json")["flux_trainer_output_dir_listing"]
    assert before == ["_output_images_will_be_put_here"]


async def test_fluxtrainer_run_with_saves_validation_and_end(comfy_server: ComfyServer) -> None:
    comfy_server.control("config", step_delay=0.001)
    graph = _flux_graph("input/lorawf/ds1", "flux_trainer_output", 5)
    graph["5"]["inputs"]["sample_prompts"] = "a red square | # skipped | a blue square"
    graph["6"]["inputs"]["steps"] = 3
    graph["7"] = {
        "class_type": "FluxTrainSave",
        "inputs": {"network_trainer": ["6", 0], "save_state": False, "copy_to_comfy_lora_folder": False},
    }
    graph["8"] = {"class_type": "FluxTrainLoop", "inputs": {"network_trainer": ["7", 0], "steps": 2}}
    graph["9"] = {
        "class_type": "FluxTrainSave",
        "inputs": {"network_trainer": ["8", 0], "save_state": False, "copy_to_comfy_lora_folder": True},
    }
    graph["10"] = {
        "class_type": "FluxTrainValidationSettings",
        "inputs": {
            "steps": 2,
            "width": 100,
            "height": 64,
            "guidance_scale": 3.5,
            "seed": 42,
            "shift": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
        },
    }
    graph["11"] = {
        "class_type": "FluxTrainValidate",
        "inputs": {"network_trainer": ["9", 0], "validation_settings": ["10", 0]},
    }
    graph["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 1], "filename_prefix": "flux_val"}}
    graph["13"] = {
        "class_type": "FluxTrainEnd",
        "inputs": {"network_trainer": ["11", 0], "save_state": False},
    }
    graph["14"] = {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}}
    graph["15"] = {"class_type": "PreviewAny", "inputs": {"source": ["13", 2]}}
    graph["16"] = {"class_type": "PreviewAny", "inputs": {"source": ["13", 1]}}
    sock = await Socket.connect(comfy_server, "flux")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        await _upload_dataset(client, "lorawf/ds1", 2)
        answer = await post_prompt(client, graph, "flux")
        frames = await sock.until_done(answer["prompt_id"], timeout=60)
        entry = (await client.get(f"/history/{answer['prompt_id']}")).json()[answer["prompt_id"]]
    await sock.close()
    assert entry["status"]["status_str"] == "success", entry["status"]
    # dataset: 2 images, batch 1, 1 repeat -> L = 2; loop 6 (3 steps) crosses a pass boundary
    progress = [
        (f["data"]["node"], f["data"]["value"], f["data"]["max"]) for f in frames if f["type"] == "progress"
    ]
    assert progress == [("6", 1, 3), ("6", 2, 3), ("8", 1, 2)]
    out = comfy_server.root / "flux_trainer_output"
    name = "flux_lora_rank4_bf16"
    assert (out / "flux_lora_args.json").is_file() and (out / "flux_lora_workflow.json").is_file()
    assert (out / f"{name}-step00003.safetensors").is_file() and (
        out / f"{name}-step00005.safetensors"
    ).is_file()
    assert (out / f"{name}.safetensors").is_file()
    assert (
        comfy_server.root / "models" / "loras" / "flux_trainer" / f"{name}-step00005.safetensors"
    ).is_file()
    samples = sorted(os.listdir(out / "sample"))
    assert len(samples) == 2 and all(
        s.startswith(f"{name}_e000003_0") and s.endswith("_42.png") for s in samples
    )
    assert entry["outputs"]["14"] == {"text": [f"flux_trainer_output/{name}-step00003.safetensors"]}
    assert entry["outputs"]["15"] == {"text": [f"flux_trainer_output/{name}.safetensors"]}
    assert json.loads(entry["outputs"]["16"]["text"][0])["ss_steps"] == "5"
    images = entry["outputs"]["12"]["images"]
    assert [i["filename"] for i in images] == ["flux_val_00001_.png", "flux_val_00002_.png"]
    from PIL import Image

    with Image.open(comfy_server.root / "output" / "flux_val_00001_.png") as img:
        assert img.size == (96, 64)
    assert not any(f["type"] == "executed" and f["data"]["node"] in ("5", "6", "7", "13") for f in frames)
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        loras = (await client.get("/models/loras")).json()
    assert loras == [f"flux_trainer/{name}-step00005.safetensors"]


async def test_fluxtrainer_empty_dataset_folder_fails_in_dataset_add(comfy_server: ComfyServer) -> None:
    (comfy_server.root / "input" / "empty_ds").mkdir()
    sock = await Socket.connect(comfy_server, "e")
    await sock.recv()
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        pid = (await post_prompt(client, _flux_graph("input/empty_ds", "out", 2), "e"))["prompt_id"]
        frames = await sock.until_done(pid)
    await sock.close()
    err = frames[-3]["data"]
    assert (err["node_type"], err["exception_type"]) == ("TrainDatasetAdd", "ValueError")
    assert "no image files found" in err["exception_message"]
