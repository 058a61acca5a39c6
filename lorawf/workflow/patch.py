"""The patcher: write a plan and a trigger token into an API-format FluxTrainer workflow. Pure: no I/O.

Nodes are found by role (class_type, links and input names), never by hard-coded id, so a template exported
again with other ids still works. Every change is expressed as an RFC 6902 JSON Patch against the template
and applied with jsonpatch, so ``--emit-patch`` shows a reviewer exactly what changed.

Exact step counts: FluxTrainer has no save-every-K input and its loops train the sum of their ``steps``. The
patcher therefore rebuilds the training chain as one block per checkpoint, ``FluxTrainLoop(K) -> FluxTrainSave
-> FluxTrainValidate`` (plus the block's side nodes: checkpoint-path preview, validation-image saver), the last
block getting the remainder, so the loops add up to exactly ``max_train_steps`` and a checkpoint lands on every
multiple of K and on the final step. The first block of the template is the prototype for all blocks.
"""

from __future__ import annotations

import copy
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from lorawf.comfy.graph import is_link
from lorawf.comfy.preflight import MAX_FILE_NAME, longest_trainer_file_name
from lorawf.comfy.schema import InputSpec, NodeSchema, SchemaSet
from lorawf.errors import OverrideError, TemplateError, TokenError
from lorawf.safepaths import file_stem
from lorawf.training.families import FAMILIES, FLUX, ModelFamily
from lorawf.training.plan import TrainingPlan

PLACEHOLDER = "STYLE_TOKEN"
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf")
TRAINER_TYPE = "NETWORKTRAINER"
LOOP = "FluxTrainLoop"
SAVE = "FluxTrainSave"
VALIDATE = "FluxTrainValidate"
END = "FluxTrainEnd"
INIT = "InitFluxLoRATraining"
#: The Init node of each family (training/families.py): it says which family a template trains.
INIT_FAMILIES: dict[str, ModelFamily] = {f.init_class: f for f in FAMILIES.values()}
VALIDATE_CLASSES = frozenset(f.validate_class for f in FAMILIES.values())
AND_VALIDATE = "FluxTrainAndValidateLoop"
BLOCK_SLOTS = 10  # ids per generated block: base + 10 * block + slot

# Inputs the plan owns: ``--set`` on them would desynchronise the plan from the chain, so it names the option.
PLANNED_INPUTS: dict[tuple[str, str], str] = {
    **{(family.init_class, name): option for family in FAMILIES.values() for name, option in (
        ("max_train_steps", "--steps or --steps-per-image"), ("learning_rate", "--lr"), ("network_dim", "--dim"),
        ("network_alpha", "--alpha"), ("output_name", "--output-name"), ("output_dir", "--checkpoint-dir"),
        (family.prompt_inputs[0], "the prompts node"))},
    (LOOP, "steps"): "--steps and --interval",
    ("TrainDatasetAdd", "batch_size"): "--batch",
    ("TrainDatasetAdd", "num_repeats"): "--repeats",
    ("TrainDatasetAdd", "class_tokens"): "--token",
    ("TrainDatasetAdd", "dataset_path"): "--server-dataset-path",
}

Workflow = dict[str, Any]


@dataclass(frozen=True)
class PatchOptions:
    """What to write besides the plan: the trigger token, server paths and free-form ``--set`` values."""

    token: str
    dataset_path: str | None = None
    output_dir: str | None = None
    output_name: str | None = None
    sets: tuple[str, ...] = ()
    image_prefix: str | None = None  # SaveImage folder for validation images (default: output_name)
    save_state: bool = False  # --resumable: every checkpoint also saves the training state (docs/fluxtrainer.md §5.6)


@dataclass(frozen=True)
class Block:
    """One checkpoint block of the training chain: its trainer-chain nodes and their side nodes.

    ``side`` nodes belong to the block (they show or save what its Save/Validate produced: a checkpoint path
    preview, a validation image saver) and are copied into every generated block. ``attached`` nodes only
    hang off it (a loss plot of the trainer, a display of the loop's step count): they stay once, linked to the
    corresponding node of the regenerated chain.
    """

    chain: tuple[str, ...]  # FluxTrainLoop first, then Save / Validate ... in chain order
    side: tuple[str, ...]
    attached: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.chain + self.side


@dataclass(frozen=True)
class Roles:
    """Where each role sits in a workflow (node ids)."""

    init: str
    general_config: str | None
    dataset_adds: tuple[str, ...]
    optimizer: str | None
    prompts: tuple[str, str]  # (node id, input name) holding the '|'-separated validation prompts
    prefix: tuple[str, ...]  # chain nodes between Init and the first loop
    blocks: tuple[Block, ...]
    end: str
    family: ModelFamily = FLUX  # told by the Init node's class


@dataclass(frozen=True)
class PatchResult:
    """The patched workflow and the JSON Patch that turns the template into it.

    ``notes`` say what the patcher did beyond writing values (a template shape rewritten, no validation);
    ``unchecked`` names the nodes whose class has no schema here, so nothing checked their inputs.
    """

    workflow: Workflow
    operations: list[dict[str, Any]] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()


# --------------------------------------------------------------------------- token


def validate_token(token: str) -> str:
    """Return the trigger token if it can be substituted safely, else raise :class:`TokenError`."""
    if not isinstance(token, str) or not token.strip():
        raise TokenError("--token is empty: give the trigger word for the style, e.g. --token mystyle")
    if token != token.strip():
        raise TokenError(f"--token {token!r} has leading or trailing whitespace; remove it")
    if "|" in token:
        raise TokenError(f"--token {token!r} contains '|', which separates validation prompts")
    if " --" in token:
        raise TokenError(f"--token {token!r} contains ' --', which kohya reads as a prompt option")
    for ch in token:
        if ch in "\r\n\t" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise TokenError(f"--token {token!r} contains a newline or control character ({ord(ch):#06x})")
    if PLACEHOLDER in token:
        raise TokenError(f"--token {token!r} contains the placeholder {PLACEHOLDER} itself")
    return token


# --------------------------------------------------------------------------- graph helpers


def _title(workflow: Workflow, node_id: str) -> str:
    meta = workflow[node_id].get("_meta")
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def _label(workflow: Workflow, node_id: str) -> str:
    title = _title(workflow, node_id)
    cls = workflow[node_id].get("class_type", "?")
    return f'node {node_id} {cls} "{title}"' if title else f"node {node_id} {cls}"


def _consumers(workflow: Workflow) -> dict[str, list[tuple[str, str, int]]]:
    """Map node id -> [(consumer id, consumer input, source slot)] in workflow order."""
    out: dict[str, list[tuple[str, str, int]]] = {nid: [] for nid in workflow}
    for nid, node in workflow.items():
        for name, value in (node.get("inputs") or {}).items():
            if is_link(value) and value[0] in out:
                out[value[0]].append((nid, name, int(value[1])))
    return out


def _schema(schemas: SchemaSet, workflow: Workflow, node_id: str) -> NodeSchema:
    cls = workflow[node_id].get("class_type")
    if cls not in schemas:
        raise TemplateError(f"{_label(workflow, node_id)}: class_type {cls!r} is not in the node schemas")
    return schemas[cls]


def _check_shape(workflow: Any) -> None:
    if not isinstance(workflow, dict) or not workflow:
        raise TemplateError("template: expected a non-empty API-format workflow object")
    for nid, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise TemplateError(f"template: node {nid} has no class_type; is this an API-format workflow?")
        if not isinstance(node.get("inputs", {}), dict):
            raise TemplateError(f"template: node {nid} has 'inputs' that is not an object")


def _only(workflow: Workflow, class_type: str, role: str) -> str:
    ids = [nid for nid, n in workflow.items() if n.get("class_type") == class_type]
    if not ids:
        raise TemplateError(f"template: no {class_type} node found (role: {role})")
    if len(ids) > 1:
        raise TemplateError(f"template: {len(ids)} {class_type} nodes ({', '.join(ids)}) for the single role {role}")
    return ids[0]


def _linked_source(workflow: Workflow, node_id: str, input_name: str) -> str | None:
    value: Any = (workflow[node_id].get("inputs") or {}).get(input_name)
    if is_link(value):
        if value[0] not in workflow:
            raise TemplateError(f"{_label(workflow, node_id)}: input {input_name} links to missing node {value[0]}")
        return str(value[0])
    return None


# --------------------------------------------------------------------------- roles


def template_family(workflow: Workflow) -> ModelFamily | None:
    """The family a template trains, told by its (first) training initialiser; None when it has none."""
    if isinstance(workflow, dict):
        for node in workflow.values():
            found = INIT_FAMILIES.get(str(node.get("class_type"))) if isinstance(node, dict) else None
            if found is not None:
                return found
    return None


def find_roles(workflow: Workflow, schemas: SchemaSet) -> Roles:
    """Locate every role the patcher needs; a role with no node, or several where one is expected, is an error."""
    _check_shape(workflow)
    inits = [n for n, node in workflow.items() if node.get("class_type") in INIT_FAMILIES]
    if not inits:
        *first, last = INIT_FAMILIES
        raise TemplateError(f"template: no {', '.join(first)} or {last} node found (role: training initialiser)")
    if len(inits) > 1:
        raise TemplateError(f"template: {len(inits)} training initialiser nodes ({', '.join(inits)}) for the "
                            "single role training initialiser")
    init = inits[0]
    family = INIT_FAMILIES[workflow[init]["class_type"]]
    if family is FLUX and _linked_source(workflow, init, "network_config") is not None:
        raise TemplateError(
            f"{_label(workflow, init)}: TrainNetworkConfig is wired into network_config; at FluxTrainer 639b3e8 it "
            "crashes with network_type 'lora' and selects the SD LoRA module. Remove it for Flux LoRA training"
        )
    optimizer = _linked_source(workflow, init, "optimizer_settings")

    # Dataset chain: Init.dataset <- TrainDatasetAdd <- ... <- TrainDatasetGeneralConfig
    adds: list[str] = []
    general: str | None = None
    cursor = _linked_source(workflow, init, "dataset")
    seen: set[str] = set()
    while cursor is not None and cursor not in seen:
        seen.add(cursor)
        cls = workflow[cursor]["class_type"]
        if cls == "TrainDatasetAdd":
            adds.append(cursor)
            cursor = _linked_source(workflow, cursor, "dataset_config")
        elif cls == "TrainDatasetGeneralConfig":
            general = cursor
            cursor = None
        else:
            raise TemplateError(f"{_label(workflow, cursor)}: unexpected node in the dataset chain of Init {init}")
    if not adds:
        raise TemplateError(f"template: no TrainDatasetAdd feeds {_label(workflow, init)} (role: dataset)")
    adds.reverse()

    prompt_input = family.prompt_inputs[0]  # SDXL: sample_prompts_pos (the negative ones stay as they are)
    prompts_source = _linked_source(workflow, init, prompt_input)
    if prompts_source is None:
        prompts = (init, prompt_input)
    else:
        texts = {
            name: value
            for name, value in (workflow[prompts_source].get("inputs") or {}).items()
            if isinstance(value, str)
        }
        string_inputs = list(texts) if len(texts) == 1 else [n for n, v in texts.items() if PLACEHOLDER in v]
        if len(string_inputs) != 1:
            raise TemplateError(
                f"{_label(workflow, prompts_source)} feeds {prompt_input} but has "
                f"{'no' if not string_inputs else 'several'} text input(s) that could hold the prompts "
                f"(role: validation prompts); put them in one input with the {PLACEHOLDER} placeholder"
            )
        prompts = (prompts_source, string_inputs[0])

    # Training chain: follow network_trainer from Init to FluxTrainEnd.
    consumers = _consumers(workflow)
    chain: list[str] = []
    cursor = init
    while True:
        nexts = []
        for cid, _name, slot in consumers[cursor]:
            if workflow[cid].get("class_type") not in schemas:
                continue  # a node of another pack is never part of the trainer chain: it stays as it is
            cschema = _schema(schemas, workflow, cid)
            src_schema = _schema(schemas, workflow, cursor)
            if slot < len(src_schema.output_types) and src_schema.output_types[slot] == TRAINER_TYPE and (
                TRAINER_TYPE in cschema.output_types or cschema.class_type == END
            ):
                nexts.append(cid)
        if not nexts:
            break
        if len(nexts) > 1:
            raise TemplateError(
                f"template: the training chain must be linear, but nodes {', '.join(nexts)} all take "
                f"network_trainer from {_label(workflow, cursor)}; ComfyUI would run them in no guaranteed order"
            )
        cursor = nexts[0]
        if workflow[cursor]["class_type"] == AND_VALIDATE:
            raise TemplateError(
                f"{_label(workflow, cursor)}: FluxTrainAndValidateLoop overshoots when the total is not a multiple "
                "of its interval; lorawf needs a FluxTrainLoop -> FluxTrainSave chain (patch_workflow rewrites it)"
            )
        chain.append(cursor)
        if workflow[cursor]["class_type"] == END:
            break
    if not chain or workflow[chain[-1]]["class_type"] != END:
        raise TemplateError(f"template: the training chain from Init {init} does not end in a FluxTrainEnd node")
    end = chain.pop()
    loops = [i for i, nid in enumerate(chain) if workflow[nid]["class_type"] == LOOP]
    if not loops:
        raise TemplateError("template: no FluxTrainLoop in the training chain (role: training block)")
    prefix = tuple(chain[: loops[0]])
    chain_set = set(chain) | {init, end}

    blocks: list[Block] = []
    for index, start in enumerate(loops):
        stop = loops[index + 1] if index + 1 < len(loops) else len(chain)
        members = chain[start:stop]
        downstream: list[str] = []
        frontier = list(members)
        while frontier:  # every node downstream of the block's chain nodes that is not itself in the chain
            nid = frontier.pop(0)
            for cid, _name, _slot in consumers[nid]:
                if cid not in chain_set and cid not in downstream:
                    downstream.append(cid)
                    frontier.append(cid)
        side = _belonging(workflow, schemas, members, downstream)
        attached = tuple(n for n in downstream if n not in side)
        blocks.append(Block(tuple(members), side, attached))
    return Roles(init, general, tuple(adds), optimizer, prompts, prefix, tuple(blocks), end, family)


def _belonging(workflow: Workflow, schemas: SchemaSet, members: list[str], downstream: list[str]) -> tuple[str, ...]:
    """The downstream nodes that show or save what the block's Save/Validate produced (not the trainer state):
    they are per checkpoint. A node fed by one of them belongs too."""
    products = {m for m in members if workflow[m]["class_type"] == SAVE or workflow[m]["class_type"] in VALIDATE_CLASSES}
    belongs: list[str] = []
    changed = True
    while changed:
        changed = False
        for nid in downstream:
            if nid in belongs:
                continue
            for value in (workflow[nid].get("inputs") or {}).values():
                if not is_link(value):
                    continue
                source, slot = str(value[0]), int(value[1])
                if source in belongs or (source in products and _output_type(workflow, schemas, source, slot)
                                         != TRAINER_TYPE):
                    belongs.append(nid)
                    changed = True
                    break
    return tuple(n for n in downstream if n in belongs)


def _output_type(workflow: Workflow, schemas: SchemaSet, node_id: str, slot: int) -> str | None:
    types = _schema(schemas, workflow, node_id).output_types
    return types[slot] if 0 <= slot < len(types) else None


# --------------------------------------------------------------------------- template shapes


def fresh_ids(workflow: Workflow, count: int) -> list[str]:
    """``count`` numeric node ids not used in ``workflow``."""
    numeric = [int(n) for n in workflow if n.isdigit()]
    first = max(numeric, default=0) + 1
    return [str(first + i) for i in range(count)]


def expand_train_and_validate(workflow: Workflow) -> list[str]:
    """Rewrite each ``FluxTrainAndValidateLoop`` in place into one ``FluxTrainLoop -> FluxTrainSave ->
    FluxTrainValidate`` block (with a checkpoint-path preview and a validation-image saver) that uses the same
    validation settings; the chain rebuild then repeats it per checkpoint. Returns one note per rewrite.

    The node overshoots whenever the total is not a multiple of its interval (docs/fluxtrainer.md §4.3); the
    block chain trains the plan exactly and checkpoints at every multiple of the plan's interval.
    """
    notes: list[str] = []
    for nid in [n for n, node in workflow.items() if node.get("class_type") == AND_VALIDATE]:
        node = workflow[nid]
        inputs = node.get("inputs") or {}
        trainer = inputs.get("network_trainer")
        settings = inputs.get("validation_settings")
        label = _label(workflow, nid)
        save, validate, preview, images = fresh_ids(workflow, 4)
        workflow[nid] = {"inputs": {"network_trainer": trainer, "steps": int(inputs.get("save_at_steps") or 250)},
                         "class_type": LOOP, "_meta": {"title": "Train steps"}}
        workflow[save] = {"inputs": {"network_trainer": [nid, 0], "save_state": False,
                                     "copy_to_comfy_lora_folder": False},
                          "class_type": SAVE, "_meta": {"title": "Save LoRA checkpoint"}}
        workflow[validate] = {"inputs": {"network_trainer": [save, 0],
                                         **({"validation_settings": settings} if is_link(settings) else {})},
                              "class_type": VALIDATE, "_meta": {"title": "Validation images"}}
        workflow[preview] = {"inputs": {"source": [save, 1]}, "class_type": "PreviewAny",
                             "_meta": {"title": "Checkpoint path"}}
        workflow[images] = {"inputs": {"images": [validate, 1], "filename_prefix": "validation"},
                            "class_type": "SaveImage", "_meta": {"title": "Save validation images"}}
        for other, spec in workflow.items():
            if other in (nid, save, validate, preview, images):
                continue
            for name, value in (spec.get("inputs") or {}).items():
                if is_link(value) and value[0] == nid and int(value[1]) == 0:
                    spec["inputs"][name] = [validate, 0]  # the trainer now comes out of the block's end
        source = f"the settings of node {settings[0]}" if isinstance(settings, list) and is_link(settings) \
            else "FluxTrainer's default settings"
        notes.append(
            f"{label}: rewritten into FluxTrainLoop -> FluxTrainSave -> FluxTrainValidate blocks, one per "
            f"checkpoint of the plan (instead of save_at_steps {inputs.get('save_at_steps')} / validate_at_steps "
            f"{inputs.get('validate_at_steps')}), validating with {source}")
    return notes


# --------------------------------------------------------------------------- writing values


def _set(workflow: Workflow, schemas: SchemaSet, node_id: str, name: str, value: Any) -> None:
    """Write a literal input, refusing inputs the node does not declare (ComfyUI would silently drop them)."""
    schema = _schema(schemas, workflow, node_id)
    if name not in schema.inputs:
        raise TemplateError(
            f"{_label(workflow, node_id)}: {schema.class_type} does not declare input {name!r}; "
            "the server would silently ignore it"
        )
    workflow[node_id].setdefault("inputs", {})[name] = value


def _set_title(workflow: Workflow, node_id: str, title: str) -> None:
    meta = workflow[node_id].get("_meta")
    if not isinstance(meta, dict):
        meta = {}
        workflow[node_id]["_meta"] = meta
    meta["title"] = title


def _block_title(cls: str, prototype_title: str, start: int, end: int, index: int, count: int) -> str:
    if cls == LOOP:
        return f"Train steps {start + 1}-{end} (block {index}/{count})"
    if cls == SAVE:
        return f"Save LoRA checkpoint @ step {end}"
    if cls in VALIDATE_CLASSES:
        return f"Validation images @ step {end}"
    # the prototype's own step number goes ("checkpoint @ 600", "preview step 250"): each block gets its own
    base = re.sub(r"\s*(@\s*)?(step\s*)?\d+$", "", prototype_title, flags=re.IGNORECASE) or cls
    return f"{base} @ step {end}"


def _rebuild_chain(workflow: Workflow, roles: Roles, plan: TrainingPlan, image_prefix: str) -> list[str]:
    """Replace the template's blocks by one block per checkpoint; returns the new block node ids."""
    prototype = roles.blocks[0]
    if len(prototype.nodes) > BLOCK_SLOTS:
        raise TemplateError(
            f"template: the first training block has {len(prototype.nodes)} nodes; at most {BLOCK_SLOTS} are supported"
        )
    proto_nodes = {nid: copy.deepcopy(workflow[nid]) for nid in prototype.nodes}
    old = {nid for block in roles.blocks for nid in block.nodes}
    classes = {nid: str(workflow[nid]["class_type"]) for nid in old}
    for nid in old:
        del workflow[nid]
    numeric = [int(n) for n in workflow if n.isdigit()]
    base = 1000 if not numeric or max(numeric) < 1000 else (max(numeric) // 1000 + 1) * 1000

    new_ids: list[str] = []
    mappings: list[dict[str, str]] = []
    previous = roles.prefix[-1] if roles.prefix else roles.init
    count = len(plan.checkpoint_steps)
    start = 0
    for index, (end_step, steps) in enumerate(zip(plan.checkpoint_steps, plan.loop_steps), start=1):
        mapping = {old_id: str(base + BLOCK_SLOTS * index + slot) for slot, old_id in enumerate(prototype.nodes)}
        for old_id in prototype.nodes:
            node = copy.deepcopy(proto_nodes[old_id])
            for name, value in (node.get("inputs") or {}).items():
                if is_link(value) and value[0] in mapping:
                    node["inputs"][name] = [mapping[value[0]], value[1]]
            cls = node["class_type"]
            if old_id == prototype.chain[0]:
                node["inputs"]["network_trainer"] = [previous, 0]
                node["inputs"]["steps"] = steps
            if cls == "SaveImage" and "filename_prefix" in node.get("inputs", {}):
                node["inputs"]["filename_prefix"] = f"{image_prefix}/val_step{end_step:05d}"
            proto_title = str((node.get("_meta") or {}).get("title", ""))
            node["_meta"] = {"title": _block_title(cls, proto_title, start, end_step, index, count)}
            workflow[mapping[old_id]] = node
            new_ids.append(mapping[old_id])
        previous = mapping[prototype.chain[-1]]
        start = end_step
        mappings.append(mapping)
    workflow[roles.end].setdefault("inputs", {})["network_trainer"] = [previous, 0]
    _relink_attached(workflow, roles, classes, mappings)
    return new_ids


def _relink_attached(workflow: Workflow, roles: Roles, classes: dict[str, str],
                     mappings: list[dict[str, str]]) -> None:
    """Nodes that only hang off a template block stay once, linked to the corresponding node of the new chain:
    the first template block's to the first new block, the last one's to the last, the others in proportion."""
    count, blocks = len(mappings), roles.blocks
    for index, block in enumerate(blocks):
        target = count - 1 if len(blocks) == 1 else round(index * (count - 1) / (len(blocks) - 1))
        for nid in block.attached:
            for name, value in list((workflow[nid].get("inputs") or {}).items()):
                if is_link(value) and value[0] not in workflow:
                    source = _counterpart(str(value[0]), block, blocks[0], classes, mappings[target])
                    if source is None:
                        raise TemplateError(
                            f"{_label(workflow, nid)}: input {name} hangs off node {value[0]} of a template block "
                            "with no counterpart in the first block, which every generated block copies; move "
                            "it to the first block or to FluxTrainEnd")
                    workflow[nid]["inputs"][name] = [source, value[1]]


def _counterpart(old: str, block: Block, prototype: Block, classes: dict[str, str],
                 mapping: dict[str, str]) -> str | None:
    """The new node standing where ``old`` (a chain node of ``block``, now deleted) stood: same class, same
    place among the nodes of that class."""
    if old in mapping:
        return mapping[old]
    if old not in block.chain:
        return None
    cls = classes[old]
    position = [n for n in block.chain if classes[n] == cls].index(old)
    candidates = [n for n in prototype.chain if classes[n] == cls]
    return mapping[candidates[position]] if position < len(candidates) else None


# --------------------------------------------------------------------------- --set


def is_file_list(spec: InputSpec) -> bool:
    """True for a combo whose values are server model files: they differ per server, so any name is accepted
    offline and checked by preflight against the live server."""
    choices = spec.choices or ()
    return spec.type == "COMBO" and (not choices or all(
        isinstance(c, str) and c.lower().endswith(MODEL_EXTENSIONS) for c in choices
    ))


def coerce_value(spec: InputSpec, raw: str, where: str) -> Any:
    """Turn a ``--set`` string into the JSON value the input's schema wants, checking range and choices."""
    if not spec.is_widget:
        raise OverrideError(f"{where}: is a link input ({spec.type}); it cannot be set to a value")
    value: Any
    if spec.type == "INT":
        if not re.fullmatch(r"[+-]?\d+", raw.strip()):
            raise OverrideError(f"{where}={raw!r}: expected a whole number")
        value = int(raw)
    elif spec.type == "FLOAT":
        try:
            value = float(raw)
        except ValueError:
            raise OverrideError(f"{where}={raw!r}: expected a number") from None
        if not math.isfinite(value):
            raise OverrideError(f"{where}={raw!r}: expected a finite number")
    elif spec.type == "BOOLEAN":
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            value = True
        elif lowered in ("false", "0", "no", "off"):
            value = False
        else:
            raise OverrideError(f"{where}={raw!r}: expected true or false")
    elif spec.type == "COMBO":
        if not is_file_list(spec) and raw not in (spec.choices or ()):
            raise OverrideError(f"{where}={raw!r}: not allowed; {spec.describe_range()}")
        if not raw:
            raise OverrideError(f"{where}: a file name is required")
        value = raw
    else:
        value = raw
    if spec.type in ("INT", "FLOAT"):
        lo, hi = spec.minimum, spec.maximum
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise OverrideError(f"{where}={raw}: out of range; {spec.describe_range()}")
    return value


def apply_sets(workflow: Workflow, schemas: SchemaSet, sets: Iterable[str]) -> None:
    """Apply ``NODE_ID.input=VALUE`` / ``ClassType.input=VALUE`` assignments, typed from the node schema."""
    for assignment in sets:
        target, eq, raw = assignment.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not eq or not dot or not node_ref or not name:
            raise OverrideError(f"--set {assignment!r}: expected NODE_ID.input=VALUE or ClassType.input=VALUE")
        if node_ref in workflow:
            ids = [node_ref]
        else:
            ids = [nid for nid, n in workflow.items() if n.get("class_type") == node_ref]
            if not ids:
                raise OverrideError(f"--set {assignment!r}: no node with id or class_type {node_ref!r} in the workflow")
        for nid in ids:
            schema = _schema(schemas, workflow, nid)
            where = f"--set {node_ref}.{name} ({_label(workflow, nid)})"
            option = PLANNED_INPUTS.get((schema.class_type, name))
            if option:
                raise OverrideError(f"{where}: this value is planned; use {option} instead")
            spec = schema.inputs.get(name)
            if spec is None:
                declared = ", ".join(n for n, s in schema.inputs.items() if s.is_widget)
                raise OverrideError(f"{where}: {schema.class_type} has no input {name!r}; settable: {declared}")
            workflow[nid].setdefault("inputs", {})[name] = coerce_value(spec, raw, where)


# --------------------------------------------------------------------------- diff as JSON Patch


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def diff_workflows(before: Workflow, after: Workflow) -> list[dict[str, Any]]:
    """An RFC 6902 patch from ``before`` to ``after`` at node and input granularity (readable for review)."""
    ops: list[dict[str, Any]] = []
    for nid in before:
        if nid not in after:
            ops.append({"op": "remove", "path": _pointer(nid)})
    for nid, node in after.items():
        if nid not in before:
            ops.append({"op": "add", "path": _pointer(nid), "value": copy.deepcopy(node)})
            continue
        old = before[nid]
        if old.get("class_type") != node.get("class_type") or set(old) != set(node):
            ops.append({"op": "replace", "path": _pointer(nid), "value": copy.deepcopy(node)})
            continue
        old_inputs, new_inputs = old.get("inputs", {}), node.get("inputs", {})
        for name in old_inputs:
            if name not in new_inputs:
                ops.append({"op": "remove", "path": _pointer(nid, "inputs", name)})
        for name, value in new_inputs.items():
            if name not in old_inputs:
                ops.append({"op": "add", "path": _pointer(nid, "inputs", name), "value": copy.deepcopy(value)})
            elif old_inputs[name] != value or type(old_inputs[name]) is not type(value):
                ops.append({"op": "replace", "path": _pointer(nid, "inputs", name), "value": copy.deepcopy(value)})
        if old.get("_meta") != node.get("_meta"):
            ops.append({"op": "replace", "path": _pointer(nid, "_meta"), "value": copy.deepcopy(node.get("_meta"))})
    return ops


# --------------------------------------------------------------------------- entry point


def _substitute(text: str, token: str) -> str:
    return text.replace(PLACEHOLDER, token)


def patch_workflow(
    template: Workflow, plan: TrainingPlan, options: PatchOptions, schemas: SchemaSet
) -> PatchResult:
    """Fill ``plan`` and ``options`` into ``template``; return the patched workflow and the JSON Patch applied."""
    token = validate_token(options.token)
    _check_shape(template)
    target: Workflow = copy.deepcopy(template)
    notes = expand_train_and_validate(target)
    roles = find_roles(target, schemas)
    init = roles.init
    if roles.family.name != plan.model:
        raise TemplateError(
            f"{_label(target, init)}: the template trains {roles.family.title} but the plan is for "
            f"{FAMILIES[plan.model].title}: pass --model {roles.family.name}, or a template that trains "
            f"{FAMILIES[plan.model].title}")
    if not any(target[n]["class_type"] in VALIDATE_CLASSES for n in roles.blocks[0].chain):
        notes.append(f"the template has no {roles.family.validate_class} in its training block: the run writes no "
                     "validation images, and the contact sheet has no columns")

    output_name = options.output_name
    if output_name is not None:
        output_name = output_name.strip()
        if not output_name or "/" in output_name or "\\" in output_name:
            raise OverrideError(f"--output-name {options.output_name!r}: expected a plain file-name stem")
    else:
        output_name = str(target[init]["inputs"].get("output_name") or "flux_lora")
    output_name = _substitute(output_name, file_stem(token))
    longest = longest_trainer_file_name(output_name, plan.network_dim, target[init]["inputs"].get("save_dtype", "bf16"),
                                        plan.max_train_steps)
    if len(longest.encode("utf-8")) > MAX_FILE_NAME:
        origin = "--output-name" if options.output_name is not None else f"output_name (from --token {token[:20]!r}…)"
        raise OverrideError(
            f"{origin}: {len(output_name)} characters; FluxTrainer would write {len(longest.encode('utf-8'))}-byte "
            f"file names from it (the limit is {MAX_FILE_NAME}); give a shorter --output-name")

    _set(target, schemas, init, "max_train_steps", plan.max_train_steps)
    _set(target, schemas, init, "learning_rate", plan.learning_rate)
    _set(target, schemas, init, "network_dim", plan.network_dim)
    _set(target, schemas, init, "network_alpha", float(plan.network_alpha))
    _set(target, schemas, init, "gradient_dtype", plan.gradient_dtype)
    _set(target, schemas, init, "output_name", output_name)
    if "additional_args" not in target[init]["inputs"]:
        # Absent, kohya parses the ComfyUI server's own command line instead (docs/fluxtrainer.md §8).
        _set(target, schemas, init, "additional_args", "")
    if options.output_dir is not None:
        out_dir = options.output_dir.strip()
        if not out_dir:
            raise OverrideError("--checkpoint-dir is empty: give a folder on the GPU host")
        _set(target, schemas, init, "output_dir", out_dir)

    if roles.optimizer is not None:
        opt_schema = _schema(schemas, target, roles.optimizer)
        if "optimizer_type" not in opt_schema.inputs:
            raise TemplateError(
                f"{_label(target, roles.optimizer)}: {opt_schema.class_type} forces its own optimizer; lorawf plans "
                f"{plan.optimizer}, which needs an OptimizerConfig node"
            )
        _set(target, schemas, roles.optimizer, "optimizer_type", plan.optimizer)
        _set(target, schemas, roles.optimizer, "lr_scheduler", plan.lr_scheduler)
    if roles.general_config is not None:
        # Without it a re-submitted identical prompt trains nothing (ComfyUI cache) (docs/fluxtrainer.md §7).
        _set(target, schemas, roles.general_config, "reset_on_queue", True)

    dataset_path = None
    if options.dataset_path is not None:
        dataset_path = options.dataset_path.strip()
        if not dataset_path:
            raise OverrideError("--server-dataset-path is empty: give the dataset folder on the GPU host")
    for add in roles.dataset_adds:
        _set(target, schemas, add, "batch_size", plan.batch_size)
        _set(target, schemas, add, "num_repeats", plan.num_repeats)
        tokens = str(target[add]["inputs"].get("class_tokens") or "")
        _set(target, schemas, add, "class_tokens", _substitute(tokens, token) if PLACEHOLDER in tokens else token)
        if dataset_path is not None:
            _set(target, schemas, add, "dataset_path", dataset_path)

    prompts_node, prompts_input = roles.prompts
    prompts = target[prompts_node]["inputs"].get(prompts_input)
    if not isinstance(prompts, str) or PLACEHOLDER not in prompts:
        raise TemplateError(
            f"{_label(target, prompts_node)}: input {prompts_input} has no {PLACEHOLDER} placeholder; "
            "patch the template, not an already patched workflow"
        )
    substituted = _substitute(prompts, token)
    if substituted.count(" --") != prompts.count(" --"):
        # kohya reads ' --' in a sample prompt as the start of an option (--w, --n ...): the token would vanish
        raise TokenError(f"--token {token!r}: in the validation prompts of {_label(target, prompts_node)} it makes "
                         "' --', which kohya reads as a prompt option; choose a token that does not start with '-'")
    target[prompts_node]["inputs"][prompts_input] = substituted

    image_prefix = (options.image_prefix or output_name).strip("/")
    if not image_prefix or "\\" in image_prefix or ".." in image_prefix.split("/"):
        raise OverrideError(f"validation image prefix {options.image_prefix!r}: expected a relative folder")
    _rebuild_chain(target, roles, plan, image_prefix)
    for nid, node in target.items():
        if node["class_type"] in (SAVE, END) and "save_state" in _schema(schemas, target, nid).inputs:
            # FluxTrainEnd defaults to true: a multi-GB state folder; a resumable run saves one per checkpoint
            node["inputs"]["save_state"] = options.save_state and node["class_type"] == SAVE
    apply_sets(target, schemas, options.sets)
    _substitute_everywhere(target, token)

    operations = diff_workflows(template, target)
    patched = jsonpatch.apply_patch(template, operations, in_place=False)
    unchecked = tuple(_label(patched, nid) for nid, node in patched.items() if node["class_type"] not in schemas)
    return PatchResult(patched, operations, tuple(notes), unchecked)


def _substitute_everywhere(workflow: Workflow, token: str) -> None:
    """No placeholder survives: titles and every other text input (a filename prefix, a note) get the token."""
    for node in workflow.values():
        inputs = node.get("inputs") or {}
        for name, value in inputs.items():
            if isinstance(value, str) and PLACEHOLDER in value:
                inputs[name] = _substitute(value, token)
        meta = node.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("title"), str) and PLACEHOLDER in meta["title"]:
            meta["title"] = _substitute(meta["title"], token)


def training_steps(workflow: Workflow, schemas: SchemaSet) -> tuple[int, list[int]]:
    """``(max_train_steps, [loop steps...])`` of a workflow's chain, for consistency checks."""
    roles = find_roles(workflow, schemas)
    total = int(workflow[roles.init]["inputs"].get("max_train_steps", 0))
    loops = [int(workflow[b.chain[0]]["inputs"].get("steps", 0)) for b in roles.blocks]
    return total, loops
