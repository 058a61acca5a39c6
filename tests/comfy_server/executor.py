"""Prompt execution as ComfyUI 0.3.64's ``execution.py`` + ``main.prompt_worker`` do it, with simulated nodes.

The order of websocket messages, the execution order of nodes (``ExecutionList`` with
``ux_friendly_pick_node``), the progress-state bookkeeping and the shapes of
``execution_error``/``execution_interrupted`` follow the source and the recordings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lorawf.comfy.graph import is_link  # ComfyUI's own rule, as in execution.py

if TYPE_CHECKING:
    from tests.comfy_server.app import ServerState


class InterruptProcessing(Exception):
    """``comfy.model_management.InterruptProcessingException``."""


class SimulatedError(Exception):
    """A node failure whose reported type name and traceback are given explicitly."""

    def __init__(self, message: str, type_name: str, traceback: list[str] | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.tb = traceback


@dataclass
class NodeOutput:
    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


def format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


def full_type_name(ex: BaseException) -> str:
    if isinstance(ex, SimulatedError):
        return ex.type_name
    klass = type(ex)
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class NodeContext:
    """What a simulated node can use: progress bar, interrupt checks, the server's folders."""

    server: ServerState
    prompt_id: str
    node_id: str
    class_type: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    progress_count: int = 0

    def check_interrupt(self) -> None:
        if self.server.interrupt_requested:
            self.server.interrupt_requested = False
            raise InterruptProcessing("Processing interrupted")

    async def sleep(self, seconds: float) -> None:
        scaled = seconds * self.server.config["delay_scale"]
        if scaled > 0:
            await asyncio.sleep(scaled)
        else:
            await asyncio.sleep(0)

    async def progress(self, value: float, total: float) -> None:
        """One ``ProgressBar.update_absolute``: the hook checks for interrupts, then reports."""
        self.check_interrupt()
        self.server.progress.update(self.node_id, value, total)
        self.server.send_progress_state(self.prompt_id)
        self.server.send_sync(
            "progress",
            {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id},
            self.server.client_id,
        )
        self.progress_count += 1
        self.server.after_progress(self.prompt_id)
        await asyncio.sleep(0)


NodeFunc = Callable[[NodeContext, dict[str, Any]], Awaitable[NodeOutput]]


@dataclass
class ProgressRegistry:
    """``comfy_execution.progress.ProgressRegistry`` (only non-pending nodes are reported)."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def start(self, node_id: str) -> None:
        self.nodes[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}

    def update(self, node_id: str, value: float, total: float) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 0.0, "max": 1.0, "state": "running"})
        entry["value"] = value
        entry["max"] = total

    def finish(self, node_id: str) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 0.0, "max": 1.0, "state": "running"})
        entry["state"] = "finished"
        entry["value"] = entry["max"]

    def message(self, prompt_id: str) -> dict[str, Any]:
        return {
            "prompt_id": prompt_id,
            "nodes": {
                nid: {
                    "value": s["value"],
                    "max": s["max"],
                    "state": s["state"],
                    "node_id": nid,
                    "prompt_id": prompt_id,
                    "display_node_id": nid,
                    "parent_node_id": None,
                    "real_node_id": nid,
                }
                for nid, s in self.nodes.items()
            },
        }


class ExecutionList:
    """``comfy_execution.graph.ExecutionList`` without lazy inputs, subgraphs or caching."""

    def __init__(self, prompt: dict[str, Any], is_output: Callable[[str], bool]) -> None:
        self.prompt = prompt
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}
        self.staged: str | None = None

    def add_node(self, unique_id: str) -> None:
        node_ids = [unique_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            uid = node_ids.pop()
            if uid in self.pending:
                continue
            self.pending[uid] = True
            self.block_count[uid] = 0
            self.blocking[uid] = {}
            for value in self.prompt[uid]["inputs"].values():
                if is_link(value):
                    from_id, slot = value
                    node_ids.append(from_id)
                    links.append((from_id, int(slot), uid))
        for from_id, slot, to_id in links:
            if to_id not in self.blocking[from_id]:
                self.blocking[from_id][to_id] = {}
            if slot not in self.blocking[from_id][to_id]:
                self.blocking[from_id][to_id][slot] = True
                self.block_count[to_id] += 1

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        self.staged = self._pick(ready)
        return self.staged

    def _pick(self, ready: list[str]) -> str:
        for n in ready:
            if self.is_output(n):
                return n
        for n in ready:
            for blocked in self.blocking[n]:
                if self.is_output(blocked):
                    return n
        for n in ready:
            for blocked in self.blocking[n]:
                for blocked1 in self.blocking[blocked]:
                    if self.is_output(blocked1):
                        return n
        return ready[0]

    def complete(self) -> None:
        node_id = self.staged
        assert node_id is not None
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= len(self.blocking[node_id][blocked])
        self.staged = None


@dataclass
class RunResult:
    success: bool
    messages: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]
    meta: dict[str, Any]


async def execute_prompt(
    server: ServerState,
    prompt_id: str,
    prompt: dict[str, Any],
    extra_data: dict[str, Any],
    execute_outputs: list[str],
    nodes: dict[str, NodeFunc],
) -> RunResult:
    """``PromptExecutor.execute_async``."""
    server.interrupt_requested = False
    server.client_id = extra_data.get("client_id", None)
    messages: list[tuple[str, dict[str, Any]]] = []

    def add_message(event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        messages.append((event, data))
        if server.client_id is not None or broadcast:
            server.send_sync(event, data, server.client_id)

    add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
    server.progress = ProgressRegistry()
    add_message("execution_cached", {"nodes": [], "prompt_id": prompt_id}, broadcast=False)

    object_info = server.object_info()
    ui_outputs: dict[str, Any] = {}
    meta_outputs: dict[str, Any] = {}
    results: dict[str, tuple[Any, ...]] = {}
    executed: list[str] = []
    current_outputs = list(prompt.keys())

    def is_output(node_id: str) -> bool:
        info = object_info.get(prompt[node_id]["class_type"], {})
        return bool(info.get("output_node", False))

    execution_list = ExecutionList(prompt, is_output)
    for node_id in list(execute_outputs):
        execution_list.add_node(node_id)

    success = True
    while not execution_list.is_empty():
        node_id = execution_list.stage()
        if node_id is None:  # a dependency cycle (validation would normally have caught it)
            break
        class_type = prompt[node_id]["class_type"]
        ctx = NodeContext(server, prompt_id, node_id, class_type, prompt, extra_data)
        input_data: dict[str, Any] | None = None
        try:
            server.progress.start(node_id)
            server.send_progress_state(prompt_id)
            input_data = _input_data(prompt, node_id, object_info.get(class_type, {}), results, extra_data)
            if server.client_id is not None:
                server.last_node_id = node_id
                server.send_sync(
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                    server.client_id,
                )
            await asyncio.sleep(0)
            ctx.check_interrupt()  # before_node_execution
            func = nodes.get(class_type)
            if func is None:
                raise SimulatedError(f"the fake server does not simulate {class_type}", "NotImplementedError")
            node_args = {k: v for k, v in input_data.items()}
            out = await func(ctx, node_args)
            results[node_id] = out.outputs
            if out.ui:
                ui = server.apply_output_faults(out.ui)
                ui_outputs[node_id] = ui
                meta_outputs[node_id] = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                if server.client_id is not None:
                    server.send_sync(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                        server.client_id,
                    )
        except InterruptProcessing:
            success = False
            add_message(
                "execution_interrupted",
                {
                    "prompt_id": prompt_id,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(executed),
                },
                broadcast=True,
            )
            break
        except Exception as ex:  # noqa: BLE001 - a node failure becomes execution_error
            success = False
            formatted: dict[str, Any] = {}
            if input_data is not None:
                formatted = {name: [format_value(v)] for name, v in input_data.items()}
            add_message(
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(executed),
                    "exception_message": f"{ex}\n",
                    "exception_type": full_type_name(ex),
                    "traceback": _traceback(server, ex),
                    "current_inputs": formatted,
                    "current_outputs": current_outputs,
                },
                broadcast=False,
            )
            break
        server.progress.finish(node_id)
        server.send_progress_state(prompt_id)
        executed.append(node_id)
        execution_list.complete()
    else:
        add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
    server.last_node_id = None
    return RunResult(success, messages, ui_outputs, meta_outputs)


def _input_data(
    prompt: dict[str, Any],
    node_id: str,
    info: dict[str, Any],
    results: dict[str, tuple[Any, ...]],
    extra_data: dict[str, Any],
) -> dict[str, Any]:
    """``execution.get_input_data``: declared inputs in prompt order, then the hidden ones."""
    declared = info.get("input", {}) or {}
    known: set[str] = set()
    for section in ("required", "optional"):
        known.update((declared.get(section) or {}).keys())
    data: dict[str, Any] = {}
    for name, value in prompt[node_id]["inputs"].items():
        if is_link(value):
            out = results.get(value[0])
            slot = int(value[1])
            data[name] = out[slot] if out is not None and slot < len(out) else None
        elif name in known:
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            data[name] = value
    for name, kind in (declared.get("hidden") or {}).items():
        if kind == "PROMPT":
            data[name] = prompt
        elif kind == "EXTRA_PNGINFO":
            data[name] = extra_data.get("extra_pnginfo", None)
        elif kind == "UNIQUE_ID":
            data[name] = node_id
    return data


def _traceback(server: ServerState, ex: BaseException) -> list[str]:
    if isinstance(ex, SimulatedError) and ex.tb is not None:
        return ex.tb
    root = str(server.paths.root)
    return [
        (
            f'  File "{root}/execution.py", line 496, in execute\n    output_data, output_ui, has_subgraph, '
            "has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, "
            "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n"
        ),
        (
            f'  File "{root}/execution.py", line 315, in get_output_data\n    return_values = await '
            "_async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, "
            "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n"
        ),
        f'  File "{root}/execution.py", line 289, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n',
        f'  File "{root}/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n',
    ]
