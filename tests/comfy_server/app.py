"""The aiohttp application: ComfyUI 0.3.64's ``server.py`` routes, queue, history and websocket.

Handlers are ports of the upstream ones (same checks in the same order), so the status codes,
bodies and aiohttp error pages come out as recorded in ``fixtures/transcripts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import ipaddress
import json
import logging
import mimetypes
import os
import socket
import struct
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from tests.comfy_server.executor import (
    IsChangedFunc,
    NodeFunc,
    OutputCache,
    ProgressRegistry,
    RunResult,
    execute_prompt,
)
from tests.comfy_server.faults import Faults
from tests.comfy_server.paths import ComfyPaths

log = logging.getLogger("comfy_server")

COMFYUI_VERSION = "0.3.64"
DEFAULT_MAX_UPLOAD_MB = 100
MAXIMUM_HISTORY_SIZE = 10000
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"

# (class_type, input) -> model folder whose files make up the combo list ("<input images>": input/).
DYNAMIC_COMBOS: dict[tuple[str, str], str] = {
    ("FluxTrainModelSelect", "transformer"): "diffusion_models",
    ("FluxTrainModelSelect", "vae"): "vae",
    ("FluxTrainModelSelect", "clip_l"): "text_encoders",
    ("FluxTrainModelSelect", "t5"): "text_encoders",
    ("ExtractFluxLoRA", "original_model"): "diffusion_models",
    ("ExtractFluxLoRA", "finetuned_model"): "diffusion_models",
    ("SD3ModelSelect", "transformer"): "checkpoints",
    ("SD3ModelSelect", "clip_l"): "text_encoders",
    ("SD3ModelSelect", "clip_g"): "text_encoders",
    ("SD3ModelSelect", "t5"): "text_encoders",
    ("SDXLModelSelect", "checkpoint"): "checkpoints",
    ("FluxKohyaInferenceSampler", "lora_name"): "loras",
    ("LoadImage", "image"): "<input images>",
    # ComfyUI's native nodes (tests/comfy_server/native_nodes.py; "<...>" lists: NATIVE_COMBO_SOURCES)
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("VAELoader", "vae_name"): "<vae list>",
    ("TrainLoraNode", "existing_lora"): "<loras + [None]>",
    ("LoadImageTextSetFromFolderNode", "folder"): "<input subfolders>",
    ("LoadImageSetFromFolderNode", "folder"): "<input subfolders>",
}

Item = tuple[Any, str, dict[str, Any], dict[str, Any], list[str]]


def is_loopback(host: str | None) -> bool:
    """``server.is_loopback``."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for _fam, _t, _p, _c, sockaddr in socket.getaddrinfo(host, None, family, socket.SOCK_STREAM):
                if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                    return loopback
                loopback = True
        except socket.gaierror:
            pass
    return loopback


class ServerState:
    """Everything ``PromptServer`` + ``PromptQueue`` + the worker keep in memory."""

    def __init__(
        self,
        root: Path,
        *,
        object_info: dict[str, Any] | None = None,
        max_upload_size: float | None = None,
        auth: tuple[str, str] | None = None,
        step_delay: float = 0.001,
        native_progress: bool = False,
        without_fluxtrainer: bool = False,
        nodes: dict[str, NodeFunc] | None = None,
        frontend_dir: Path | None = None,
    ) -> None:
        from tests.comfy_server.nodes import CORE_IS_CHANGED, CORE_NODES

        self.paths = ComfyPaths(root)
        # the web root (``--front-end-root``): the built ComfyUI frontend, served at ``/``
        self.frontend_dir = None if frontend_dir is None else os.path.abspath(frontend_dir)
        self.nodes: dict[str, NodeFunc] = dict(CORE_NODES)
        self.is_changed_funcs: dict[str, IsChangedFunc] = dict(CORE_IS_CHANGED)
        try:
            from tests.comfy_server.flux_nodes import FLUX_IS_CHANGED, FLUX_NODES
        except ImportError:  # phase 2 module not present
            FLUX_NODES, FLUX_IS_CHANGED = {}, {}
        self.nodes.update(FLUX_NODES)
        self.is_changed_funcs.update(FLUX_IS_CHANGED)
        try:
            from tests.comfy_server.native_nodes import NATIVE_COMBO_SOURCES, NATIVE_NODES
        except ImportError:  # native nodes module not present
            NATIVE_NODES, NATIVE_COMBO_SOURCES = {}, {}
        self.nodes.update(NATIVE_NODES)
        self.combo_sources: dict[str, Callable[[ComfyPaths], list[str]]] = dict(NATIVE_COMBO_SOURCES)
        if nodes:
            self.nodes.update(nodes)
        self.dynamic_object_info = object_info is None
        if object_info is None:
            from lorawf.comfy.schema import bundled_object_info

            object_info = bundled_object_info()
            # core loaders lorawf never uses but the 0.3.64 frontend looks up when it creates any model loader
            # (its modelToNode store registers them; a missing one breaks VAELoader and the like in the web UI)
            object_info.update(json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "object_info"
                                           / "core_model_loaders.json").read_text(encoding="utf-8")))
        if without_fluxtrainer:  # a ComfyUI without the node pack: neither its schemas nor its nodes
            object_info = {k: v for k, v in object_info.items()
                           if not str(v.get("python_module", "")).startswith("custom_nodes.ComfyUI-FluxTrainer")}
            for name in FLUX_NODES:
                self.nodes.pop(name, None)
        self.base_object_info = object_info
        self._oi_cache: tuple[Any, dict[str, Any], Any] | None = None
        self.max_upload_size: float = (
            DEFAULT_MAX_UPLOAD_MB if max_upload_size is None else float(max_upload_size)
        )
        self.faults = Faults(auth=auth)
        # native_progress: TrainLoraNode sends progress per optimizer step, as ComfyUI after 0.3.64 does
        self.config: dict[str, Any] = {
            "step_delay": step_delay,
            "delay_scale": 1.0,
            "native_progress": native_progress,
        }
        self.request_log: list[dict[str, Any]] = []
        # requests being handled now per route (stalls included), and the most at once: how parallel a client is
        self.in_flight: dict[str, int] = {}
        self.in_flight_max: dict[str, int] = {}
        # PromptServer
        self.number = 0
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.socket_transports: dict[int, Any] = {}
        self.socket_epoch: dict[int, int] = {}
        self.epoch = 0
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupt_requested = False
        self.progress = ProgressRegistry()
        # PromptExecutor.caches (classic cache) and the node classes' own state (class attributes)
        self.cache = OutputCache()
        self.node_class_state: dict[str, dict[str, Any]] = {}
        # not ComfyUI: every FluxTrainLoop run, for tests (kept across restarts, see flux_nodes.train_loop)
        self.training_log: list[dict[str, Any]] = []
        self.messages: asyncio.Queue[tuple[Any, Any, str | None]] = asyncio.Queue()
        # PromptQueue
        self.queue: list[tuple[Any, str, int, Item]] = []
        self.seq = 0
        self.currently_running: dict[int, Item] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self.not_empty = asyncio.Event()
        self.worker_task: asyncio.Task[None] | None = None
        self.publisher_task: asyncio.Task[None] | None = None
        self.relisten: Callable[[float], Awaitable[None]] | None = None

    # --- object_info -----------------------------------------------------------------------------

    def object_info(self) -> dict[str, Any]:
        if not self.dynamic_object_info:
            return self.base_object_info
        lists = {}
        for folder in set(DYNAMIC_COMBOS.values()):
            if folder == "<input images>":
                lists[folder] = self.paths.input_images()
            elif folder in self.combo_sources:
                lists[folder] = self.combo_sources[folder](self.paths)
            else:
                lists[folder] = self.paths.filename_list(folder)
        key = json.dumps(lists, sort_keys=True)
        if self._oi_cache is not None and self._oi_cache[0] == key:
            return self._oi_cache[1]
        info = copy.deepcopy(self.base_object_info)
        for (cls, name), folder in DYNAMIC_COMBOS.items():
            node = info.get(cls)
            if not node:
                continue
            for section in ("required", "optional"):
                spec = (node["input"].get(section) or {}).get(name)
                if isinstance(spec, list) and spec and isinstance(spec[0], list):
                    spec[0] = list(lists[folder])
                elif isinstance(spec, list) and len(spec) > 1 and spec[0] == "COMBO" and isinstance(spec[1], dict):
                    spec[1]["options"] = list(lists[folder])  # the V3 form, e.g. TripleCLIPLoader
        self._oi_cache = (key, info, None)
        return info

    def schemas(self) -> Any:
        from lorawf.comfy.schema import parse_object_info

        info = self.object_info()
        if self._oi_cache is not None and self._oi_cache[1] is info and self._oi_cache[2] is not None:
            return self._oi_cache[2]
        schemas = parse_object_info(info, source="fake server object_info")
        if self._oi_cache is not None and self._oi_cache[1] is info:
            self._oi_cache = (self._oi_cache[0], info, schemas)
        elif not self.dynamic_object_info:
            self._oi_cache = ("static", info, schemas)
        return schemas

    # --- messaging ---------------------------------------------------------------------------------

    def get_queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.currently_running)}}

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        if self.faults.silenced(data):
            return
        self.messages.put_nowait((event, data, sid))

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.get_queue_info()})

    def send_progress_state(self, prompt_id: str) -> None:
        self.send_sync("progress_state", self.progress.message(prompt_id), self.client_id)

    def after_progress(self, prompt_id: str) -> None:
        for frame in self.faults.on_progress(prompt_id):
            self.send_sync(frame[0], frame[1], self.client_id)

    def apply_output_faults(self, ui: dict[str, Any]) -> dict[str, Any]:
        return self.faults.rewrite_outputs(ui)

    async def send(self, event: Any, data: Any, sid: str | None) -> None:
        if isinstance(data, (bytes, bytearray)):
            payload: Any = struct.pack(">I", event) + bytes(data)
            binary = True
        else:
            payload = json.dumps({"type": event, "data": data})
            binary = False
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            targets = []
        for ws in targets:
            with contextlib.suppress(Exception):
                if binary:
                    await ws.send_bytes(payload)
                else:
                    await ws.send_str(payload)

    async def publisher(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            await self.send(event, data, sid)
            if event == "progress":
                target = self.faults.drop_after_progress()
                if target is not None:
                    self.abort_sockets(None if target == "*" else target)

    def abort_sockets(self, sid: str | None = None) -> None:
        """Close the TCP connection(s) with no close frame, as a dying link or process would."""
        for key, ws in list(self.sockets.items()):
            if sid is not None and key != sid:
                continue
            transport = self.socket_transports.get(id(ws))
            if transport is not None:
                transport.abort()

    # --- queue -------------------------------------------------------------------------------------

    def queue_put(self, item: Item) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (item[0], item[1], self.seq, item))
        self.queue_updated()
        self.not_empty.set()

    def queue_get(self) -> tuple[Item, int]:
        _n, _p, _s, item = heapq.heappop(self.queue)
        i = self.task_counter
        self.currently_running[i] = copy.deepcopy(item)
        self.task_counter += 1
        self.queue_updated()
        return item, i

    def task_done(self, item_id: int, result: RunResult) -> None:
        prompt = self.currently_running.pop(item_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[prompt[1]] = {
            "prompt": list(prompt),
            "outputs": result.outputs,
            "status": {
                "status_str": "success" if result.success else "error",
                "completed": result.success,
                "messages": [[event, data] for event, data in result.messages],
            },
            "meta": result.meta,
        }
        self.queue_updated()

    def wipe_queue(self) -> None:
        self.queue = []
        self.queue_updated()

    def delete_queue_item(self, prompt_id: Any) -> bool:
        for x in range(len(self.queue)):
            if self.queue[x][1] == prompt_id:
                if len(self.queue) == 1:
                    self.wipe_queue()
                else:
                    self.queue.pop(x)
                    heapq.heapify(self.queue)
                    self.queue_updated()
                return True
        return False

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for i, k in enumerate(self.history):
            if i >= offset:
                out[k] = self.history[k]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    async def worker(self) -> None:
        """``main.prompt_worker``."""
        while True:
            while not self.queue:
                self.not_empty.clear()
                await self.not_empty.wait()
            item, item_id = self.queue_get()
            _number, prompt_id, prompt, extra_data, outputs = item
            result = await execute_prompt(self, prompt_id, prompt, extra_data, outputs, self.nodes)
            self.task_done(item_id, result)
            if self.client_id is not None:
                self.send_sync("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)

    def start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self.worker_task = loop.create_task(self.worker())
        if self.publisher_task is None:
            self.publisher_task = loop.create_task(self.publisher())

    async def restart(self, downtime: float = 0.0) -> None:
        """Forget everything in memory and drop every connection, as a restarted process would.

        The disk (output folder, state folders, models) is kept, as a real restart keeps it; so is the
        test-only ``training_log``."""
        if self.worker_task is not None:
            self.worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.worker_task
        while not self.messages.empty():
            self.messages.get_nowait()
        self.queue.clear()
        self.currently_running.clear()
        self.history.clear()
        self.number = 0
        self.client_id = None
        self.last_node_id = None
        self.interrupt_requested = False
        self.progress = ProgressRegistry()
        self.cache = OutputCache()
        self.node_class_state = {}
        self.epoch += 1
        self.abort_sockets()
        self.sockets.clear()
        if downtime > 0 and self.relisten is not None:
            await self.relisten(downtime)
        self.start_tasks()


# ----------------------------------------------------------------------------------------------------
# middlewares


def _route_of(path: str) -> str:
    return path[4:] if path.startswith("/api/") else path


def make_middlewares(state: ServerState) -> list[Any]:
    @web.middleware
    async def test_hooks(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/__test__/"):
            return await handler(request)
        route = _route_of(request.path)
        state.in_flight[route] = state.in_flight.get(route, 0) + 1
        state.in_flight_max[route] = max(state.in_flight_max.get(route, 0), state.in_flight[route])
        try:
            return await _test_hooks(request, handler)
        finally:
            state.in_flight[route] -= 1

    async def _test_hooks(request: web.Request, handler: Any) -> web.StreamResponse:
        state.request_log.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "websocket": request.headers.get("Upgrade", "").lower() == "websocket",
                "time": time.time(),
            }
        )
        if not state.faults.authorized(request.headers):
            return web.Response(status=401, text="401: Unauthorized")
        action = state.faults.take_route_fault(request.method, _route_of(request.path))
        if action is not None:
            kind = action["kind"]
            if kind == "stall":
                await asyncio.sleep(float(action.get("seconds", 1.0)))
            else:
                mode = str(action.get("mode", "500"))
                if mode == "500":
                    raise RuntimeError("fault injected by the test server")  # aiohttp's 500 page
                if mode == "413":
                    size = int(state.max_upload_size * 1024 * 1024)
                    return web.Response(status=413, text=f"Maximum request body size {size} exceeded.")
                if mode == "malformed":
                    return web.Response(status=200, body=b'{"prompt_id": "', content_type="application/json")
                if mode == "close":
                    if request.transport is not None:
                        request.transport.abort()
                    return web.Response(status=500)
                if mode == "truncate":
                    return await _truncated(request, await handler(request))
                return web.Response(status=int(action.get("status", 500)))
        return await handler(request)

    async def _truncated(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """Send the headers and half of a file, then drop the connection (a download cut mid-way)."""
        path = getattr(resp, "_path", None)
        if path is None:
            return resp
        st = os.stat(path)
        data = Path(path).read_bytes()  # small test files only
        out = web.StreamResponse(status=200, headers={
            "Content-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
            "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"',  # aiohttp FileResponse's ETag, so If-Range matches
        })
        await out.prepare(request)
        await out.write(data[: len(data) // 2])
        await asyncio.sleep(0.05)
        if request.transport is not None:
            request.transport.abort()
        return out

    @web.middleware
    async def origin_only_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            "Host" in request.headers
            and "Origin" in request.headers
            and not request.path.startswith("/__test__/")
        ):
            host = request.headers["Host"]
            origin = request.headers["Origin"]
            host_domain: str | None = host.lower()
            parsed = urllib.parse.urlparse(origin)
            origin_domain: str | None = parsed.netloc.lower()
            host_domain_parsed = urllib.parse.urlsplit("//" + (host_domain or ""))
            loopback = is_loopback(host_domain_parsed.hostname)
            try:
                origin_port = parsed.port
            except ValueError:
                origin_port = None
            if origin_port is None:
                host_domain = host_domain_parsed.hostname
            if host_domain_parsed.port is None:
                origin_domain = parsed.hostname
            if loopback and host_domain and origin_domain and host_domain != origin_domain:
                log.warning(
                    "request with non matching host and origin %s != %s, returning 403",
                    host_domain,
                    origin_domain,
                )
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    from tests.comfy_server.frontend import cache_control

    return [test_hooks, cache_control, origin_only_middleware]


# ----------------------------------------------------------------------------------------------------
# routes


def make_app(state: ServerState) -> web.Application:
    routes = web.RouteTableDef()
    paths = state.paths

    @routes.get("/ws")
    async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            state.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        state.sockets[sid] = ws
        state.socket_transports[id(ws)] = request.transport
        epoch = state.epoch
        try:
            await state.send("status", {"status": state.get_queue_info(), "sid": sid}, sid)
            if state.client_id == sid and state.last_node_id is not None:
                await state.send("executing", {"node": state.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                            await state.send("feature_flags", features(), sid)
                        first_message = False
                    except json.JSONDecodeError:
                        log.warning("invalid json on ws")
        finally:
            state.socket_transports.pop(id(ws), None)
            if epoch == state.epoch:  # a "restarted" server has no old handlers left to run
                state.sockets.pop(sid, None)  # the upstream pop race: may remove a newer socket
        return ws

    def features() -> dict[str, Any]:
        size: float = state.max_upload_size * 1024 * 1024
        if float(size).is_integer() and state.max_upload_size == DEFAULT_MAX_UPLOAD_MB:
            size = int(size)
        return {"supports_preview_metadata": True, "max_upload_size": size}

    @routes.get("/features")
    async def get_features(request: web.Request) -> web.Response:
        return web.json_response(features())

    @routes.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.Response:
        return web.json_response([os.path.splitext(x)[0] for x in paths.filename_list("embeddings")])

    @routes.get("/models")
    async def list_model_types(request: web.Request) -> web.Response:
        return web.json_response(paths.folder_names())

    @routes.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.Response:
        folder = request.match_info.get("folder", "")
        if not paths.has_folder(folder):
            return web.Response(status=404)
        return web.json_response(paths.filename_list(folder))

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        import sys

        ram = 25276502016
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram,
                    "ram_free": ram - 938123264,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "2.13.0+cpu",
                    "embedded_python": False,
                    "argv": [
                        "main.py",
                        "--cpu",
                        "--listen",
                        "127.0.0.1",
                        "--port",
                        str(request.url.port or 8188),
                        "--disable-auto-launch",
                    ],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram,
                        "vram_free": ram - 938123264,
                        "torch_vram_total": ram,
                        "torch_vram_free": ram - 938123264,
                    }
                ],
            }
        )

    @routes.get("/object_info")
    async def get_object_info(request: web.Request) -> web.Response:
        return web.json_response(state.object_info())

    @routes.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.Response:
        node_class = request.match_info.get("node_class", "")
        info = state.object_info()
        return web.json_response({node_class: info[node_class]} if node_class in info else {})

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(state.get_queue_info())

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        from lorawf.comfy.validate import validate_prompt

        json_data = await request.json()
        if "number" in json_data:
            number: Any = float(json_data["number"])
        else:
            number = state.number
            if json_data.get("front"):
                number = -number
            state.number += 1
        if "prompt" in json_data:
            prompt = json_data["prompt"]
            prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
            partial = json_data.get("partial_execution_targets")
            verdict = validate_prompt(prompt, state.schemas(), partial)
            extra_data = json_data.get("extra_data", {}) if "extra_data" in json_data else {}
            if "client_id" in json_data:
                extra_data["client_id"] = json_data["client_id"]
            if verdict.ok:
                queued = verdict.prompt if verdict.prompt is not None else prompt
                state.queue_put((number, prompt_id, queued, extra_data, list(verdict.outputs_to_execute)))
                return web.json_response(
                    {"prompt_id": prompt_id, "number": number, "node_errors": verdict.node_errors}
                )
            log.warning("invalid prompt: %s", verdict.error)
            return web.json_response({"error": verdict.error, "node_errors": verdict.node_errors}, status=400)
        error = {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        }
        return web.json_response({"error": error, "node_errors": {}}, status=400)

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running = [list(x) for x in state.currently_running.values()]
        pending = [list(entry[3]) for entry in state.queue]
        return web.json_response(copy.deepcopy({"queue_running": running, "queue_pending": pending}))

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            state.wipe_queue()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                state.delete_queue_item(id_to_delete)
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            if any(item[1] == prompt_id for item in state.currently_running.values()):
                state.interrupt_requested = True
            else:
                log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
        else:
            state.interrupt_requested = True
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request: web.Request) -> web.Response:
        await request.json()
        return web.Response(status=200)

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        max_items_s = request.rel_url.query.get("max_items", None)
        max_items = int(max_items_s) if max_items_s is not None else None
        offset_s = request.rel_url.query.get("offset", None)
        offset = int(offset_s) if offset_s is not None else -1
        return web.json_response(state.get_history(max_items=max_items, offset=offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_prompt_id(request: web.Request) -> web.Response:
        prompt_id = request.match_info.get("prompt_id", "")
        if prompt_id in state.history:
            return web.json_response({prompt_id: copy.deepcopy(state.history[prompt_id])})
        return web.json_response({})

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            state.history.clear()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                state.history.pop(id_to_delete, None)
        return web.Response(status=200)

    @routes.get("/view")
    async def view_image(request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" in query:
            filename, output_dir = paths.annotated_filepath(query["filename"])
            if not filename:
                return web.Response(status=400)
            if filename[0] == "/" or ".." in filename:
                return web.Response(status=400)
            if output_dir is None:
                output_dir = paths.directory_by_type(query.get("type", "output"))
            if output_dir is None:
                return web.Response(status=400)
            if "subfolder" in query:
                full_output_dir = os.path.join(output_dir, query["subfolder"])
                if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                    return web.Response(status=403)
                output_dir = full_output_dir
            filename = os.path.basename(filename)
            file = os.path.join(output_dir, filename)
            if os.path.isfile(file):
                disposition = {"Content-Disposition": f'filename="{filename}"'}
                if "preview" in query or query.get("channel", "rgba") in ("rgb", "a"):
                    body, ctype = _reencode(file, query)
                    return web.Response(body=body, content_type=ctype, headers=disposition)
                content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                if content_type in {
                    "text/html",
                    "text/html-sandboxed",
                    "application/xhtml+xml",
                    "text/javascript",
                    "text/css",
                }:
                    content_type = "application/octet-stream"
                return web.FileResponse(file, headers={**disposition, "Content-Type": content_type})
        return web.Response(status=404)

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        image_upload_type = post.get("type")
        if image_upload_type is None:
            image_upload_type = "input"
        if image_upload_type == "input":
            upload_dir = paths.input
        elif image_upload_type == "temp":
            upload_dir = paths.temp
        elif image_upload_type == "output":
            upload_dir = paths.output
        else:  # upstream: UnboundLocalError in get_dir_by_type -> 500
            raise UnboundLocalError(
                "cannot access local variable 'type_dir' where it is not associated with a value"
            )
        if image and image.file:  # type: ignore[union-attr]
            filename = image.filename  # type: ignore[union-attr]
            if not filename:
                return web.Response(status=400)
            subfolder = post.get("subfolder", "")
            full_output_folder = os.path.join(upload_dir, os.path.normpath(str(subfolder)))
            filepath = os.path.abspath(os.path.join(full_output_folder, filename))
            if os.path.commonpath((upload_dir, filepath)) != upload_dir:
                return web.Response(status=400)
            if not os.path.exists(full_output_folder):
                os.makedirs(full_output_folder)
            split = os.path.splitext(filename)
            image_is_duplicate = False
            if not (overwrite is not None and (overwrite == "true" or overwrite == "1")):
                i = 1
                while os.path.exists(filepath):
                    if _same_content(filepath, image):
                        image_is_duplicate = True
                        break
                    filename = f"{split[0]} ({i}){split[1]}"
                    filepath = os.path.join(full_output_folder, filename)
                    i += 1
            if not image_is_duplicate:
                data = image.file.read()  # type: ignore[union-attr]
                slow = state.faults.slow_disk
                if slow is None:
                    _write_file(filepath, data)
                else:  # the file is visible half written, as beside a real server's in-place write
                    with open(filepath, "wb") as f:  # noqa: ASYNC230 - a test server
                        f.write(data[: len(data) // 2])
                        f.flush()
                        await asyncio.sleep(slow["seconds"])
                        if not slow["short"]:
                            f.write(data[len(data) // 2 :])
            return web.json_response({"name": filename, "subfolder": subfolder, "type": image_upload_type})
        return web.Response(status=400)

    # --- /__test__ control -----------------------------------------------------------------------

    test_routes = web.RouteTableDef()

    @test_routes.post("/__test__/control")
    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        kind = body.pop("kind")
        if kind == "config":
            for key in ("step_delay", "delay_scale"):
                if key in body:
                    state.config[key] = float(body[key])
            if "native_progress" in body:
                state.config["native_progress"] = bool(body["native_progress"])
            return web.json_response(state.config)
        if kind == "restart":
            await state.restart(float(body.get("downtime", 0.0)))
            return web.json_response({"ok": True})
        if kind == "state":
            return web.json_response(
                {
                    "sockets": list(state.sockets),
                    "client_id": state.client_id,
                    "last_node_id": state.last_node_id,
                    "number": state.number,
                    "queue_pending": [e[1] for e in state.queue],
                    "queue_running": [x[1] for x in state.currently_running.values()],
                    "history": list(state.history),
                    "config": state.config,
                    "faults": state.faults.describe(),
                    "restarts": state.epoch,
                    "training_log": state.training_log,
                    "in_flight_max": state.in_flight_max,
                }
            )
        if kind == "close_ws":
            code = int(body.get("code", 1001))
            for sid, ws in list(state.sockets.items()):
                if body.get("client_id") in (None, sid):
                    await ws.close(code=code)
            return web.json_response({"ok": True})
        if kind == "send_binary":
            state.send_sync(*state.faults.binary_frame(body), body.get("client_id"))
            return web.json_response({"ok": True})
        try:
            result = state.faults.arm(kind, body)
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=400)
        return web.json_response(result)

    @test_routes.get("/__test__/requests")
    async def get_requests(request: web.Request) -> web.Response:
        return web.json_response(state.request_log)

    @test_routes.delete("/__test__/requests")
    async def clear_requests(request: web.Request) -> web.Response:
        state.request_log.clear()
        return web.json_response({"ok": True})

    internal = web.RouteTableDef()

    @internal.get("/internal/folder_paths")
    async def get_folder_paths(request: web.Request) -> web.Response:
        return web.json_response(paths.folder_paths())

    @internal.get("/internal/files/{directory_type}")
    async def get_files(request: web.Request) -> web.Response:
        directory_type = request.match_info["directory_type"]
        directory = paths.directory_by_type(directory_type)
        if directory_type not in ("output", "input", "temp") or directory is None:
            return web.json_response({"error": "Invalid directory type"}, status=400)
        entries = sorted(
            (e for e in os.scandir(directory) if e.is_file() and not e.name.startswith(".")),
            key=lambda e: -e.stat().st_mtime,
        )
        return web.json_response([e.name for e in entries], status=200)

    max_size = round(state.max_upload_size * 1024 * 1024)
    from tests.comfy_server import frontend

    frontend.add_routes(routes, paths, state.frontend_dir)
    app = web.Application(client_max_size=max_size, middlewares=make_middlewares(state))
    api_routes = web.RouteTableDef()
    for route in routes:
        if isinstance(route, web.RouteDef):
            api_routes.route(route.method, "/api" + route.path, **route.kwargs)(route.handler)
    app.add_routes(routes)
    app.add_routes(api_routes)
    app.add_routes(internal)
    app.add_routes(test_routes)
    if state.frontend_dir is not None:
        frontend.add_static(app, state.frontend_dir)
    return app


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _same_content(filepath: str, image: Any) -> bool:
    """``compare_image_hash``."""
    with open(filepath, "rb") as f:
        a = hashlib.sha256(f.read()).hexdigest()
    b = hashlib.sha256(image.file.read()).hexdigest()
    image.file.seek(0)
    return a == b


def _reencode(file: str, query: Any) -> tuple[bytes, str]:
    """``/view`` with ``preview=`` or ``channel=rgb|a`` (Pillow, imported only here)."""
    from PIL import Image

    with Image.open(file) as img:
        buffer = BytesIO()
        if "preview" in query:
            preview_info = query["preview"].split(";")
            image_format = preview_info[0]
            if image_format not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                image_format = "webp"
            quality = int(preview_info[-1]) if preview_info[-1].isdigit() else 90
            out = img
            if image_format == "jpeg" or query.get("channel", "") == "rgb":
                out = img.convert("RGB")
            out.save(buffer, format=image_format, quality=quality)
            return buffer.getvalue(), f"image/{image_format}"
        if query["channel"] == "rgb":
            if img.mode == "RGBA":
                r, g, b, _a = img.split()
                new_img = Image.merge("RGB", (r, g, b))
            else:
                new_img = img.convert("RGB")
            new_img.save(buffer, format="PNG")
            return buffer.getvalue(), "image/png"
        if img.mode == "RGBA":
            _r, _g, _b, a = img.split()
        else:
            a = Image.new("L", img.size, 255)
        alpha_img = Image.new("RGBA", img.size)
        alpha_img.putalpha(a)
        alpha_img.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
