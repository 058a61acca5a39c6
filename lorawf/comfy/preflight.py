"""User-facing preflight: everything the server would reject, plus what it lets through silently.

:func:`preflight` runs the faithful port of ComfyUI's validation (:mod:`lorawf.comfy.validate`) and
turns its verdict into :class:`Problem` objects that name node, title, class_type, input, value,
the allowed range or values, and a fix. On top of that it reports what the server accepts without a
word but that ruins a run:

* ``undeclared_input``: an input key the node does not declare (a literal is silently dropped, a link
  is passed on unchecked);
* ``loop_steps_mismatch``: the ``FluxTrainLoop.steps`` reached from an ``Init*Training`` node do not
  add up to its ``max_train_steps`` (training stops early or overshoots);
* ``loop_overshoot``: ``FluxTrainAndValidateLoop`` with a ``max_train_steps`` that is a multiple of
  neither ``validate_at_steps`` nor ``save_at_steps`` trains past it;
* ``dependency_cycle``: links that form a cycle (ComfyUI 0.3.64 rejects these without any node error).

Error types use the server's names wherever the server has one. Pure functions: no I/O.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lorawf.comfy.graph import is_link
from lorawf.comfy.schema import InputSpec, NodeSchema, SchemaSet
from lorawf.comfy.validate import PromptVerdict, ServerCrash, validate_prompt
from lorawf.errors import ValidationFailed

__all__ = [
    "EXTRA_TYPES",
    "MODEL_EXTENSIONS",
    "Problem",
    "closest_names",
    "preflight",
    "raise_if_problems",
    "render_json",
    "render_lines",
]

MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")
EXTRA_TYPES = ("undeclared_input", "loop_steps_mismatch", "loop_overshoot", "dependency_cycle")
TRAIN_LOOP = "FluxTrainLoop"
TRAIN_AND_VALIDATE_LOOP = "FluxTrainAndValidateLoop"
_STUB_OUTPUTS = 32


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow, fit for one line of output or one JSON object."""

    node_id: str | None
    title: str | None
    class_type: str | None
    type: str  # the server's error type name, or one of EXTRA_TYPES
    message: str
    input: str | None = None
    value: Any = None
    allowed: str | None = None
    fix: str | None = None
    suggestions: tuple[str, ...] = field(default_factory=tuple)

    def where(self) -> str:
        """``node 4 "Title" (ClassType)`` or ``workflow`` for graph-wide problems."""
        if self.node_id is None:
            return "workflow"
        title = f' "{self.title}"' if self.title and self.title != self.class_type else ""
        cls = f" ({self.class_type})" if self.class_type else ""
        return f"node {self.node_id}{title}{cls}"

    def render(self, source: str = "") -> str:
        """One line: file, node, input and value, what is wrong, what is allowed, how to fix it."""
        parts = [f"{source}: " if source else "", self.where()]
        if self.input is not None:
            parts.append(f" input {self.input!r}")
            if self.value is not None:
                parts.append(f" = {_short(self.value)}")
        parts.append(f": {self.type}: {self.message}")
        if self.allowed:
            parts.append(f"; allowed: {self.allowed}")
        if self.suggestions:
            parts.append("; closest: " + ", ".join(repr(s) for s in self.suggestions))
        if self.fix:
            parts.append(f"; fix: {self.fix}")
        return "".join(parts).replace("\n", " ")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``lorawf validate --json``."""
        data = asdict(self)
        data["suggestions"] = list(self.suggestions)
        return data


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def closest_names(value: Any, choices: Iterable[Any], n: int = 3) -> tuple[str, ...]:
    """Names from ``choices`` closest to ``value`` (a separator-only difference comes first)."""
    names = [c for c in choices if isinstance(c, str)]
    if not isinstance(value, str) or not names:
        return ()
    out: list[str] = []
    normalised = value.replace("\\", "/")
    for name in names:
        if name.replace("\\", "/") == normalised or name.rsplit("/", 1)[-1] == normalised.rsplit("/", 1)[-1]:
            out.append(name)
    for name in difflib.get_close_matches(value, names, n=n, cutoff=0.4):
        if name not in out:
            out.append(name)
    if not out:  # compare base names: 'flux1-dev-fp8.safetensors' vs 'models/flux1-dev.safetensors'
        base = {name.rsplit("/", 1)[-1]: name for name in names}
        out = [base[b] for b in difflib.get_close_matches(normalised.rsplit("/", 1)[-1], list(base), n=n, cutoff=0.3)]
    return tuple(out[:n])


def _is_model_input(spec: InputSpec | None) -> bool:
    return bool(spec and spec.choices and any(str(c).lower().endswith(MODEL_EXTENSIONS) for c in spec.choices))


# --- turning the server's verdict into problems --------------------------------------------------


class _Ctx:
    def __init__(self, workflow: Mapping[str, Any], schemas: SchemaSet) -> None:
        self.workflow = workflow
        self.schemas = schemas

    def node(self, node_id: Any) -> Mapping[str, Any]:
        node = self.workflow.get(node_id) if isinstance(node_id, str) else None
        return node if isinstance(node, Mapping) else {}

    def title(self, node_id: Any) -> str | None:
        meta = self.node(node_id).get("_meta")
        title = meta.get("title") if isinstance(meta, Mapping) else None
        return title if isinstance(title, str) else None

    def class_type(self, node_id: Any) -> str | None:
        cls = self.node(node_id).get("class_type")
        return cls if isinstance(cls, str) else None

    def schema(self, node_id: Any) -> NodeSchema | None:
        cls = self.class_type(node_id)
        return self.schemas.get(cls) if cls is not None else None

    def spec(self, node_id: Any, name: Any) -> InputSpec | None:
        schema = self.schema(node_id)
        return schema.input(name) if schema is not None and isinstance(name, str) else None

    def problem(self, node_id: Any, type_: str, message: str, **kw: Any) -> Problem:
        return Problem(str(node_id) if node_id is not None else None, self.title(node_id),
                       self.class_type(node_id), type_, message, **kw)


def _describe_link_failure(ctx: _Ctx, node_id: str, type_: str) -> Problem | None:
    """Explain an exception the server raised while following links out of ``node_id``."""
    inputs = ctx.node(node_id).get("inputs")
    if not isinstance(inputs, Mapping):
        return ctx.problem(node_id, type_, "the node has no 'inputs' object",
                           fix="add \"inputs\": {} to the node")
    for name, value in inputs.items():
        if not isinstance(value, list) or len(value) != 2:
            continue
        src, slot = value
        if not isinstance(src, str) or src not in ctx.workflow:
            return ctx.problem(node_id, type_,
                               f"links to node {src!r}, which does not exist in the workflow",
                               input=name, value=value, fix="link to an existing node id (a string) or remove the link")
        src_schema = ctx.schema(src)
        if src_schema is not None and (
            not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(src_schema.output_types)
        ):
            outputs = ", ".join(f"{i}={t}" for i, t in enumerate(src_schema.output_types)) or "none"
            return ctx.problem(node_id, type_,
                               f"links to output slot {slot!r} of node {src} ({src_schema.class_type}), "
                               f"which has outputs: {outputs}",
                               input=name, value=value, fix="use an existing output slot number")
        src_inputs = ctx.node(src).get("inputs")
        if not isinstance(src_inputs, Mapping):
            return ctx.problem(src, type_, "the node has no 'inputs' object",
                               fix="add \"inputs\": {} to the node")
    return None


def _error_to_problem(ctx: _Ctx, node_id: str, error: Mapping[str, Any]) -> Problem:
    type_ = str(error.get("type", "unknown"))
    extra = error.get("extra_info") or {}
    name = extra.get("input_name")
    spec = ctx.spec(node_id, name)
    allowed = spec.describe_range() if spec is not None else None
    received = extra.get("received_value")
    server_text = f"{error.get('message', '')}: {error.get('details', '')}".strip(": ")

    if type_ == "required_input_missing":
        default = spec.default if spec is not None else None
        fix = (f"add {name!r} (default {json.dumps(default)})" if default is not None and spec and spec.is_widget
               else f"add {name!r}" + (" as a link to a node output" if spec and not spec.is_widget else ""))
        return ctx.problem(node_id, type_, "required input is missing", input=name, allowed=allowed, fix=fix)
    if type_ in ("value_smaller_than_min", "value_bigger_than_max"):
        bound = "min" if type_ == "value_smaller_than_min" else "max"
        limit = spec.options.get(bound) if spec is not None else None
        return ctx.problem(node_id, type_, str(error.get("message", "")), input=name, value=received,
                           allowed=allowed, fix=f"set {name!r} to a value within {allowed}" if limit is not None else None)
    if type_ == "value_not_in_list":
        choices = spec.choices if spec is not None and spec.choices is not None else ()
        suggestions = closest_names(received, choices)
        what = "the server has no such file" if _is_model_input(spec) else "not one of the allowed values"
        fix = (f"use one of the server's names, e.g. {suggestions[0]!r}" if suggestions
               else "use a value from the allowed list (see `lorawf object-info`)")
        if _is_model_input(spec):
            fix += ", or put the file in the server's model folder"
        return ctx.problem(node_id, type_, what, input=name, value=received, allowed=allowed,
                           suggestions=suggestions, fix=fix)
    if type_ == "invalid_input_type":
        expected = spec.type if spec is not None else "the declared type"
        return ctx.problem(node_id, type_, f"cannot be converted to {expected} ({extra.get('exception_message', '')})",
                           input=name, value=received, allowed=allowed, fix=f"write a JSON {expected.lower()} value")
    if type_ == "return_type_mismatch":
        link = extra.get("linked_node")
        expected = spec.type if spec is not None else "?"
        src = link[0] if isinstance(link, list) and link else None
        return ctx.problem(node_id, type_,
                           f"linked output is {extra.get('received_type')} but the input takes {expected}",
                           input=name, value=link,
                           fix=f"link an output of type {expected} (node {src} gives {extra.get('received_type')})")
    if type_ == "bad_linked_input":
        return ctx.problem(node_id, type_, "a link must be [\"<node id>\", <output slot>]", input=name,
                           value=received, fix="write the link as [\"<node id>\", <slot number>]")
    if type_ == "exception_during_inner_validation":
        explained = _describe_link_failure(ctx, node_id, type_)
        if explained is not None:
            return explained
        return ctx.problem(node_id, type_, server_text, input=name)
    if type_ == "exception_during_validation":
        explained = _describe_link_failure(ctx, node_id, type_)
        if explained is not None:
            return explained
        return ctx.problem(node_id, type_, server_text)
    if type_ == "custom_validation_failed":
        return ctx.problem(node_id, type_, server_text, input=name, value=ctx.node(node_id).get("inputs", {}).get(name),
                           fix="use a file that exists on the server")
    return ctx.problem(node_id, type_, server_text, input=name, value=received, allowed=allowed)


def _verdict_problems(ctx: _Ctx, verdict: PromptVerdict) -> list[Problem]:
    problems: list[Problem] = []
    for node_id, entry in verdict.node_errors.items():
        for error in entry.get("errors", []):
            problems.append(_error_to_problem(ctx, node_id, error))
    error = verdict.error
    if error is not None and error.get("type") == "prompt_no_outputs":
        problems.append(Problem(None, None, None, "prompt_no_outputs", "the workflow has no output node, so the "
                                "server would run nothing", fix="add an output node (e.g. FluxTrainEnd, SaveImage)"))
    elif error is not None and error.get("type") == "invalid_prompt":
        problems.append(Problem(None, None, None, "invalid_prompt", f"{error.get('message')} ({error.get('details')})"))
    return problems


# --- structural checks beyond the server -------------------------------------------------------


def _unknown_nodes(ctx: _Ctx) -> list[Problem]:
    problems = []
    for node_id, node in ctx.workflow.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            problems.append(Problem(str(node_id), None, None, "invalid_prompt", "the node has no class_type",
                                    fix="give the node a \"class_type\" (is this an API-format workflow?)"))
            continue
        cls = node.get("class_type")
        if not isinstance(cls, str) or cls not in ctx.schemas:
            problems.append(ctx.problem(node_id, "invalid_prompt",
                                        f"node type {cls!r} does not exist on the server",
                                        fix="install the custom node pack that provides it, or remove the node"))
    return problems


def _stub_schemas(ctx: _Ctx) -> SchemaSet:
    """The schemas plus permissive stand-ins for unknown class types, so the rest can be validated."""
    stubs: dict[str, NodeSchema] = {}
    for node in ctx.workflow.values():
        cls = node.get("class_type") if isinstance(node, Mapping) else None
        if isinstance(cls, str) and cls not in ctx.schemas:
            stubs[cls] = NodeSchema(cls, {}, (), ("*",) * _STUB_OUTPUTS, (), False)
    return ctx.schemas.merged(SchemaSet(stubs, "stubs")) if stubs else ctx.schemas


def _undeclared_inputs(ctx: _Ctx) -> list[Problem]:
    problems = []
    for node_id, node in ctx.workflow.items():
        schema = ctx.schema(node_id)
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if schema is None or not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            if name in schema.inputs:
                continue
            effect = ("the link is passed to the node unchecked" if is_link(value)
                      else "the server silently ignores the value")
            close = tuple(difflib.get_close_matches(str(name), list(schema.inputs), n=3, cutoff=0.6))
            fix = f"rename it to {close[0]!r}" if close else "remove it"
            problems.append(ctx.problem(node_id, "undeclared_input", f"{schema.class_type} declares no such input; "
                                        f"{effect}", input=str(name), value=value,
                                        suggestions=close, fix=fix))
    return problems


def _links(node: Any) -> list[tuple[str, str, int]]:
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    out = []
    if isinstance(inputs, Mapping):
        for name, value in inputs.items():
            if is_link(value) and isinstance(value[1], int):
                out.append((str(name), value[0], value[1]))
    return out


def _cycles(ctx: _Ctx) -> list[Problem]:
    parents = {nid: [src for _, src, _ in _links(node) if src in ctx.workflow] for nid, node in ctx.workflow.items()}
    state: dict[str, int] = {}
    problems: list[Problem] = []
    reported: set[frozenset[str]] = set()

    def visit(start: str) -> None:
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(parents.get(start, [])))]
        path = [start]
        state[start] = 1
        while stack:
            nid, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[nid] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    chain = " -> ".join(f"{c} ({ctx.class_type(c)})" for c in [*reversed(cycle), cycle[-1]])
                    problems.append(ctx.problem(nxt, "dependency_cycle", f"links form a cycle: {chain}",
                                                fix="break the cycle; a node cannot depend on its own output"))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(parents.get(nxt, []))))
                path.append(nxt)

    for nid in ctx.workflow:
        if nid not in state:
            visit(nid)
    return problems


def _int_literal(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _training_problems(ctx: _Ctx) -> list[Problem]:
    """Compare the loop steps reached from each Init node with its max_train_steps."""
    children: dict[str, list[str]] = {nid: [] for nid in ctx.workflow}
    trainer_children: dict[str, list[str]] = {nid: [] for nid in ctx.workflow}
    for nid, node in ctx.workflow.items():
        for name, src, slot in _links(node):
            if src in children:
                children[src].append(nid)
                if name == "network_trainer" and slot == 0:
                    trainer_children[src].append(nid)
    # nodes that the server would execute: ancestors of output nodes
    parents = {nid: [src for _, src, _ in _links(node) if src in ctx.workflow] for nid, node in ctx.workflow.items()}
    executed: set[str] = set()
    pending = [nid for nid in ctx.workflow if (s := ctx.schema(nid)) is not None and s.output_node]
    while pending:
        nid = pending.pop()
        if nid not in executed:
            executed.add(nid)
            pending.extend(parents.get(nid, []))

    problems: list[Problem] = []
    for init_id, node in ctx.workflow.items():
        schema = ctx.schema(init_id)
        if schema is None or "max_train_steps" not in schema.inputs or "NETWORKTRAINER" not in schema.output_types:
            continue
        if init_id not in executed:
            continue
        n_steps = _int_literal(node.get("inputs", {}).get("max_train_steps"))
        if n_steps is None:
            continue
        # walk the trainer chain in order, depth first
        loops: list[tuple[str, int | None]] = []
        av_loops: list[tuple[str, int]] = []  # (node id, global step when entered)
        seen: set[str] = set()
        total = 0
        unknown_steps = False
        frontier = list(trainer_children.get(init_id, []))
        while frontier:
            nid = frontier.pop(0)
            if nid in seen or nid not in executed:
                continue
            seen.add(nid)
            cls = ctx.class_type(nid)
            if cls == TRAIN_LOOP:
                steps = _int_literal(ctx.node(nid).get("inputs", {}).get("steps"))
                loops.append((nid, steps))
                if steps is None:
                    unknown_steps = True
                else:
                    if av_loops and total >= n_steps:
                        problems.append(ctx.problem(nid, "loop_steps_mismatch",
                                                    f"this loop runs after {TRAIN_AND_VALIDATE_LOOP} node "
                                                    f"{av_loops[-1][0]} has already reached max_train_steps "
                                                    f"{n_steps}; it still trains up to one more pass",
                                                    input="steps", value=steps, fix="remove the surplus loop"))
                    total += steps
            elif cls == TRAIN_AND_VALIDATE_LOOP:
                av_loops.append((nid, total))
                total = max(total, n_steps)
            frontier.extend(trainer_children.get(nid, []))
        if unknown_steps:
            continue
        loop_sum = sum(s for _, s in loops if s is not None)
        if not av_loops and not loops:
            problems.append(ctx.problem(init_id, "loop_steps_mismatch",
                                        f"no {TRAIN_LOOP} or {TRAIN_AND_VALIDATE_LOOP} is reached through "
                                        f"'network_trainer' links, so none of the {n_steps} steps is trained",
                                        input="max_train_steps", value=n_steps,
                                        fix=f"chain {TRAIN_LOOP} nodes whose steps add up to {n_steps} "
                                            "between this node and FluxTrainEnd"))
        elif not av_loops and loop_sum < n_steps and _resumes(ctx, init_id):
            pass  # a resumed state: the schedule is already partly done, the loops train the rest (docs/fluxtrainer.md §5.6)
        elif not av_loops and loop_sum != n_steps:
            listed = " + ".join(f"{s} (node {nid})" for nid, s in loops)
            if loop_sum < n_steps:
                effect = (f"training stops at step {loop_sum} of {n_steps}; the learning-rate schedule, built for "
                          f"{n_steps} steps, never completes")
            else:
                effect = f"training overshoots max_train_steps by {loop_sum - n_steps} steps"
            problems.append(ctx.problem(init_id, "loop_steps_mismatch",
                                        f"FluxTrainLoop steps {listed} = {loop_sum}, but max_train_steps is "
                                        f"{n_steps}: {effect}", input="max_train_steps", value=n_steps,
                                        fix=f"set max_train_steps to {loop_sum} or make the loop steps add up to "
                                            f"{n_steps}"))
        elif av_loops and loop_sum > n_steps:
            problems.append(ctx.problem(init_id, "loop_steps_mismatch",
                                        f"FluxTrainLoop steps add up to {loop_sum}, more than max_train_steps "
                                        f"{n_steps}", input="max_train_steps", value=n_steps,
                                        fix=f"make the loop steps add up to at most {n_steps}"))
        for av_id, entered in av_loops:
            problems.extend(_overshoot(ctx, av_id, entered, n_steps))
    return problems


def _resumes(ctx: _Ctx, init_id: str) -> bool:
    """True when the Init node gets a training state to resume (``resume_args`` from a FluxTrainResume)."""
    source = ctx.node(init_id).get("inputs", {}).get("resume_args")
    return isinstance(source, list) and len(source) == 2 and ctx.class_type(source[0]) == "FluxTrainResume"


def _overshoot(ctx: _Ctx, av_id: str, entered: int, n_steps: int) -> list[Problem]:
    inputs = ctx.node(av_id).get("inputs", {})
    v = _int_literal(inputs.get("validate_at_steps"))
    k = _int_literal(inputs.get("save_at_steps"))
    if v is None or k is None or v <= 0 or k <= 0 or entered >= n_steps:
        return []
    if n_steps % v == 0 or n_steps % k == 0:
        return []
    # last break point below N (or the entry step), then the next one after it
    below = max(entered, (n_steps - 1) // v * v, (n_steps - 1) // k * k)
    after = min(math.floor(below / v) * v + v, math.floor(below / k) * k + k)
    return [ctx.problem(av_id, "loop_overshoot",
                        f"max_train_steps {n_steps} is a multiple of neither validate_at_steps {v} nor "
                        f"save_at_steps {k}: the loop trains past {n_steps}, up to step {after}, and the final "
                        f"file is saved at that step", input="save_at_steps", value=k,
                        fix=f"make max_train_steps a multiple of save_at_steps (e.g. {(n_steps // k + 1) * k}) "
                            f"or choose save_at_steps dividing {n_steps}")]


# --- entry points --------------------------------------------------------------------------------


def preflight(workflow: Any, schemas: SchemaSet) -> list[Problem]:
    """Every problem of an API-format ``workflow`` against ``schemas``; empty when it is clean."""
    if not isinstance(workflow, Mapping):
        return [Problem(None, None, None, "invalid_prompt", f"a workflow must be a JSON object of nodes, "
                        f"not {type(workflow).__name__}")]
    ctx = _Ctx(workflow, schemas)
    problems = _unknown_nodes(ctx)
    structurally_broken = any(p.class_type is None and p.node_id is not None for p in problems)
    if not structurally_broken:
        stubbed = _Ctx(workflow, _stub_schemas(ctx))
        try:
            verdict = validate_prompt(dict(workflow), stubbed.schemas)
        except ServerCrash as exc:
            problems.append(Problem(None, None, None, "invalid_prompt",
                                    f"the server would fail with an internal error (HTTP 500): {exc}"))
        else:
            found = _verdict_problems(ctx, verdict)
            if problems:  # unknown nodes: their stand-ins hide outputs, so 'no outputs' is not reliable
                found = [p for p in found if p.type != "prompt_no_outputs"]
            problems.extend(found)
            if not verdict.ok and not verdict.node_errors:
                problems.extend(_cycles(ctx))
            elif verdict.ok:
                problems.extend(p for p in _cycles(ctx) if p not in problems)
    problems.extend(_undeclared_inputs(ctx))
    problems.extend(_training_problems(ctx))
    problems.extend(_file_name_problems(ctx))
    return _dedupe(problems)


#: The longest file name most file systems take, in bytes.
MAX_FILE_NAME = 255


def longest_trainer_file_name(output_name: str, network_dim: object, save_dtype: object, steps: int) -> str:
    """The longest name FluxTrainer writes from ``output_name``: the state folder of the last step checkpoint,
    ``<name>_rank<dim>_<dtype>-step<NNNNN>-state`` (docs/fluxtrainer.md §5.2)."""
    return f"{output_name}_rank{network_dim}_{save_dtype}-step{steps:05d}-state"


def _file_name_problems(ctx: _Ctx) -> list[Problem]:
    """An output_name whose checkpoint names do not fit the file system: the server accepts the prompt, trains a
    whole block and then fails in FluxTrainSave with 'File name too long'."""
    problems: list[Problem] = []
    for nid, node in ctx.workflow.items():
        schema = ctx.schema(nid)
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        name = inputs.get("output_name")
        if schema is None or "output_name" not in schema.inputs or "NETWORKTRAINER" not in schema.output_types \
                or not isinstance(name, str):
            continue
        steps = _int_literal(inputs.get("max_train_steps")) or 0
        longest = longest_trainer_file_name(name, inputs.get("network_dim", 16), inputs.get("save_dtype", "bf16"),
                                            steps)
        size = len(longest.encode("utf-8"))
        if size > MAX_FILE_NAME:
            problems.append(ctx.problem(
                nid, "file_name_too_long",
                f"FluxTrainer would write {size}-byte file names from it ({MAX_FILE_NAME} is the limit), so the "
                "first checkpoint would fail with 'File name too long'",
                input="output_name", value=name,
                fix=f"shorten output_name by {size - MAX_FILE_NAME} bytes or more"))
    return problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    out: list[Problem] = []
    for p in problems:
        if p not in out:
            out.append(p)
    return out


def render_lines(problems: Iterable[Problem], source: str = "") -> list[str]:
    """One line per problem (see :meth:`Problem.render`)."""
    return [p.render(source) for p in problems]


def render_json(problems: Iterable[Problem]) -> str:
    """The problems as a JSON list of objects (``lorawf validate --json``)."""
    return json.dumps([p.to_dict() for p in problems], indent=2, ensure_ascii=False, default=str) + "\n"


def raise_if_problems(workflow: Any, schemas: SchemaSet, source: str) -> None:
    """Run :func:`preflight`; raise :class:`ValidationFailed` (exit 1) naming the first problem if any."""
    problems = preflight(workflow, schemas)
    if problems:
        more = f" (and {len(problems) - 1} more; see `lorawf validate {source}`)" if len(problems) > 1 else ""
        raise ValidationFailed(problems[0].render(source) + more)


# Problems the server lets through: worth a warning before submitting, not a refusal.
SILENT_TYPES = frozenset({"undeclared_input", "loop_steps_mismatch", "loop_overshoot"})


def gate(workflow: Any, schemas: SchemaSet, source: str,
         not_yet: frozenset[tuple[str, str]] = frozenset()) -> list[Problem]:
    """The check ``submit`` and ``run`` make before posting.

    Raises :class:`~lorawf.errors.PreflightRejected` (exit 4, nothing queued) naming every problem the
    server would reject; returns the problems it would let through silently, for the caller to warn about.
    ``not_yet`` names (class_type, input) choices that do not exist yet and will before the prompt is posted
    (a dataset folder that the upload creates): a value missing from their list is not a problem.
    """
    from lorawf.errors import PreflightRejected

    problems = [p for p in preflight(workflow, schemas)
                if not (p.type == "value_not_in_list" and (p.class_type, p.input) in not_yet)]
    doomed = [p for p in problems if p.type not in SILENT_TYPES]
    if doomed:
        lines = render_lines(doomed, source)
        raise PreflightRejected(
            f"preflight: the server would reject {source} ({len(doomed)} problem(s)); nothing was queued:\n  "
            + "\n  ".join(lines),
            hint=None,
        )
    return [p for p in problems if p.type in SILENT_TYPES]
