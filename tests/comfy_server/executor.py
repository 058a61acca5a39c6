"""Prompt execution as ComfyUI 0.3.64's ``execution.py`` + ``main.prompt_worker`` do it, with simulated nodes.

The order of websocket messages, the execution order of nodes (``ExecutionList`` with
``ux_friendly_pick_node``), the progress-state bookkeeping and the shapes of
``execution_error``/``execution_interrupted`` follow the source and the recordings.

The output cache is ComfyUI's default ("classic") one (``comfy_execution/caching.py``:
``HierarchicalCache(CacheKeySetInputSignature)`` for outputs and UI, see :class:`OutputCache`):

* a node's key is its class, its ``IS_CHANGED`` value and its literal inputs, plus those of all its
  ancestors (``get_node_signature``), so the node id does not matter, only the graph above it;
* at the start of each prompt every entry whose key is not in the new prompt is dropped, so the cache
  holds (at most) the nodes of the previous prompt(s) that the new one still contains;
* ``execution_cached`` lists the prompt's nodes that have an entry; a cached node is never added to the
  execution list as a dependency, and a cached output node is "run" from the cache: no ``executing``,
  an ``executed`` with its cached UI (``output: null`` when it had none, e.g. ``FluxTrainEnd``), a
  finished progress state, and it is not listed in ``executed`` of a later error;
* outputs of nodes that succeeded stay cached when a later node fails or the run is interrupted;
* ``IS_CHANGED`` exists only for the classes in the server's ``is_changed`` table (``LoadImage``: the
  file's sha256; ``TrainDatasetGeneralConfig``: a per-process counter that grows when
  ``reset_on_queue`` is a literal true). It sees literal inputs only (links are ``None``), its value is
  written into the prompt as ``"is_changed": [value]`` (what hidden ``PROMPT`` inputs see), and an
  exception makes it NaN, which never matches. A client-sent ``is_changed`` is used as is.

A restart (``ServerState.restart``) empties the cache, as a new process would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
# ``IS_CHANGED(**literal inputs)``: (server, inputs) -> value
IsChangedFunc = Callable[["ServerState", dict[str, Any]], Any]


class Unhashable:
    """``comfy_execution.caching.Unhashable``: a key part equal to nothing else."""

    def __init__(self) -> None:
        self.value = float("NaN")


def to_hashable(obj: Any) -> Any:
    """``comfy_execution.caching.to_hashable``."""
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if isinstance(obj, Mapping):
        return frozenset([(to_hashable(k), to_hashable(v)) for k, v in sorted(obj.items())])
    if isinstance(obj, Sequence):
        return frozenset(zip(itertools.count(), [to_hashable(i) for i in obj]))
    return Unhashable()


class OutputCache:
    """The classic ``CacheSet``'s ``outputs`` and ``ui`` caches, keyed by input signature."""

    def __init__(self) -> None:
        self.outputs: dict[Any, tuple[Any, ...]] = {}
        self.ui: dict[Any, dict[str, Any]] = {}
        self.keys: dict[str, Any] = {}

    def set_prompt(self, keys: dict[str, Any]) -> None:
        """``set_prompt`` + ``clean_unused``: keep only the entries the new prompt still uses."""
        self.keys = keys
        used = set(keys.values())
        self.outputs = {k: v for k, v in self.outputs.items() if k in used}
        self.ui = {k: v for k, v in self.ui.items() if k in used}

    def get(self, node_id: str) -> tuple[Any, ...] | None:
        key = self.keys.get(node_id)
        return None if key is None else self.outputs.get(key)

    def get_ui(self, node_id: str) -> dict[str, Any] | None:
        key = self.keys.get(node_id)
        return None if key is None else self.ui.get(key)

    def set(self, node_id: str, outputs: tuple[Any, ...]) -> None:
        self.outputs[self.keys[node_id]] = outputs

    def set_ui(self, node_id: str, entry: dict[str, Any]) -> None:
        self.ui[self.keys[node_id]] = entry


class CacheKeys:
    """``IsChangedCache`` + ``CacheKeySetInputSignature`` for one prompt."""

    def __init__(
        self,
        server: ServerState,
        prompt: dict[str, Any],
        object_info: dict[str, Any],
        extra_data: dict[str, Any],
    ) -> None:
        self.server = server
        self.prompt = prompt
        self.object_info = object_info
        self.extra_data = extra_data
        self.is_changed: dict[str, Any] = {}

    def get_is_changed(self, node_id: str) -> Any:
        if node_id in self.is_changed:
            return self.is_changed[node_id]
        node = self.prompt[node_id]
        class_type = node["class_type"]
        func = self.server.is_changed_funcs.get(class_type)
        if func is None:
            self.is_changed[node_id] = False
            return False
        if "is_changed" in node:
            self.is_changed[node_id] = node["is_changed"]
            return node["is_changed"]
        # "Intentionally do not use cached outputs here. We only want constants in IS_CHANGED"
        inputs = _input_data(
            self.prompt, node_id, self.object_info.get(class_type, {}), None, self.extra_data
        )
        try:
            node["is_changed"] = [func(self.server, inputs)]
        except Exception:  # noqa: BLE001 - upstream logs a warning and uses NaN
            node["is_changed"] = float("NaN")
        self.is_changed[node_id] = node["is_changed"]
        return node["is_changed"]

    def signature(self, node_id: str) -> Any:
        ancestors: list[str] = []
        order: dict[str, int] = {}
        self._ancestry(node_id, ancestors, order)
        signature = [self._immediate(node_id, order)]
        signature.extend(self._immediate(a, order) for a in ancestors)
        return to_hashable(signature)

    def _immediate(self, node_id: str, order: dict[str, int]) -> list[Any]:
        if node_id not in self.prompt:
            return [float("NaN")]
        node = self.prompt[node_id]
        class_type = node["class_type"]
        signature: list[Any] = [class_type, self.get_is_changed(node_id)]
        hidden = (self.object_info.get(class_type, {}).get("input") or {}).get("hidden") or {}
        if "UNIQUE_ID" in hidden.values():
            signature.append(node_id)
        inputs = node["inputs"]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                signature.append((key, ("ANCESTOR", order[value[0]], value[1])))
            else:
                signature.append((key, value))
        return signature

    def _ancestry(self, node_id: str, ancestors: list[str], order: dict[str, int]) -> None:
        if node_id not in self.prompt:
            return
        inputs = self.prompt[node_id]["inputs"]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                ancestor = value[0]
                if ancestor not in order:
                    ancestors.append(ancestor)
                    order[ancestor] = len(ancestors) - 1
                    self._ancestry(ancestor, ancestors, order)


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
    """``comfy_execution.graph.ExecutionList`` without lazy inputs or subgraphs; cached nodes are not
    added as dependencies (``is_cached``)."""

    def __init__(
        self,
        prompt: dict[str, Any],
        is_output: Callable[[str], bool],
        is_cached: Callable[[str], bool] = lambda _node_id: False,
    ) -> None:
        self.prompt = prompt
        self.is_output = is_output
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}
        self.staged: str | None = None

    def add_strong_link(self, from_id: str, slot: int, to_id: str) -> None:
        if not self.is_cached(from_id):
            self.add_node(from_id)
            if to_id not in self.blocking[from_id]:
                self.blocking[from_id][to_id] = {}
                self.block_count[to_id] += 1
            self.blocking[from_id][to_id][slot] = True

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
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                        links.append((from_id, int(slot), uid))
        for link in links:
            self.add_strong_link(*link)

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
            self.block_count[blocked] -= 1
        del self.blocking[node_id]
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
    object_info = server.object_info()
    cache = server.cache
    keys = CacheKeys(server, prompt, object_info, extra_data)
    cache.set_prompt({node_id: keys.signature(node_id) for node_id in prompt})
    cached_nodes = [node_id for node_id in prompt if cache.get(node_id) is not None]
    add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False)

    reached: list[str] = []  # nodes run or served from the cache, in order (for the history outputs)
    executed: list[str] = []
    current_outputs = list(prompt.keys())

    def is_output(node_id: str) -> bool:
        info = object_info.get(prompt[node_id]["class_type"], {})
        return bool(info.get("output_node", False))

    execution_list = ExecutionList(prompt, is_output, lambda node_id: cache.get(node_id) is not None)
    for node_id in list(execute_outputs):
        execution_list.add_node(node_id)

    success = True
    while not execution_list.is_empty():
        node_id = execution_list.stage()
        if node_id is None:  # a dependency cycle (validation would normally have caught it)
            break
        class_type = prompt[node_id]["class_type"]
        if cache.get(node_id) is not None:  # execution.execute: served from the cache
            if server.client_id is not None:
                cached_ui = cache.get_ui(node_id) or {}
                server.send_sync(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": cached_ui.get("output", None),
                        "prompt_id": prompt_id,
                    },
                    server.client_id,
                )
            server.progress.finish(node_id)
            server.send_progress_state(prompt_id)
            reached.append(node_id)
            execution_list.complete()
            continue
        ctx = NodeContext(server, prompt_id, node_id, class_type, prompt, extra_data)
        input_data: dict[str, Any] | None = None
        try:
            server.progress.start(node_id)
            server.send_progress_state(prompt_id)
            input_data = _input_data(prompt, node_id, object_info.get(class_type, {}), cache, extra_data)
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
            if out.ui:
                ui = server.apply_output_faults(out.ui)
                meta = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                cache.set_ui(node_id, {"meta": meta, "output": ui})
                if server.client_id is not None:
                    server.send_sync(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                        server.client_id,
                    )
            cache.set(node_id, tuple(out.outputs))
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
        reached.append(node_id)
        execution_list.complete()
    else:
        add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
    # history outputs: every node of the prompt with a cached UI (upstream: ``caches.ui.all_node_ids()``)
    ui_outputs: dict[str, Any] = {}
    meta_outputs: dict[str, Any] = {}
    for node_id in [*reached, *(n for n in prompt if n not in reached)]:
        entry = cache.get_ui(node_id)
        if entry is not None:
            ui_outputs[node_id] = entry["output"]
            meta_outputs[node_id] = entry["meta"]
    server.last_node_id = None
    return RunResult(success, messages, ui_outputs, meta_outputs)


def _input_data(
    prompt: dict[str, Any],
    node_id: str,
    info: dict[str, Any],
    results: OutputCache | None,
    extra_data: dict[str, Any],
) -> dict[str, Any]:
    """``execution.get_input_data``: declared inputs in prompt order, then the hidden ones
    (``results`` None: links are missing, as for ``IS_CHANGED``)."""
    declared = info.get("input", {}) or {}
    known: set[str] = set()
    for section in ("required", "optional"):
        known.update((declared.get(section) or {}).keys())
    data: dict[str, Any] = {}
    for name, value in prompt[node_id]["inputs"].items():
        if is_link(value):
            out = None if results is None else results.get(value[0])
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
