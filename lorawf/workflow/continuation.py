"""Continue a training run from a checkpoint: the workflow of the next segment, built from the run's own
recorded workflow. Pure: no I/O.

What FluxTrainer does on a continued run is in docs/fluxtrainer.md §5.6 (read from its source): in both modes
the trainer's step counter starts again at 0 and ``FluxTrainLoop.steps`` is relative, so the remaining blocks
train exactly the remaining steps; file names carry the segment's own step numbers, so each segment writes into
its own folder and lorawf adds the offset when it names the files locally.

* ``exact``: ``FluxTrainResume(load_state_path=<state of step S>, skip_until_initial_step=true)`` feeds the
  Init node's ``resume_args``; optimizer, LR schedule (sized by the unchanged ``max_train_steps``) and
  RNG carry on. Needs the state folder that ``FluxTrainSave(save_state=true)`` wrote at step S.
* ``weights``: the checkpoint of step S reaches the model select's ``lora_path`` through a string node (the
  input is link-only); ``max_train_steps`` becomes the remaining steps, so the fresh schedule covers them. The
  optimizer state and the schedule's position are lost: the result is close to, not the same as, one run.

The Init and model-select nodes are the recorded run's family's (training/families.py). At FluxTrainer 639b3e8
every family has both inputs, applied the same way before kohya's shared ``NetworkTrainer.init_train`` loads
``network_weights`` and then the state: ``resume_args`` (nodes.py:464/597-598, nodes_sdxl.py:84/219-220,
nodes_sd3.py:94/232-233) and ``lora_path`` -> ``network_weights`` (nodes.py:46/588-589, nodes_sdxl.py:34/210-211,
nodes_sd3.py:37/223-224). A schema without the input (another FluxTrainer version) refuses that mode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from lorawf.comfy.graph import is_link
from lorawf.comfy.schema import SchemaSet
from lorawf.errors import InputError
from lorawf.training.families import ModelFamily
from lorawf.workflow.patch import SAVE, find_roles, fresh_ids

EXACT, WEIGHTS = "exact", "weights"
MODES = (EXACT, WEIGHTS)
RESUME = "FluxTrainResume"
RESUME_INPUT = "resume_args"  # of the Init node: FluxTrainResume's ARGS
WEIGHTS_INPUT = "lora_path"  # of the model select: network_weights

Workflow = dict[str, Any]


@dataclass(frozen=True)
class Continuation:
    """The next segment: its workflow, and how its step numbers relate to the run's."""

    workflow: Workflow
    mode: str
    from_step: int  # S: the run's global step the segment starts from
    to_step: int  # the run's last step (max_train_steps of the run)
    checkpoints: tuple[int, ...]  # the run's global steps the segment checkpoints at
    output_dir: str  # where the segment writes (its own folder: file names restart at step 0)
    notes: tuple[str, ...] = ()

    @property
    def step_offset(self) -> int:
        """Add to a step number the trainer writes in this segment to get the run's global step."""
        return self.from_step


def block_end_steps(workflow: Workflow, schemas: SchemaSet) -> list[int]:
    """The run's global step at the end of each block (where each checkpoint lands)."""
    roles = find_roles(workflow, schemas)
    ends, total = [], 0
    for block in roles.blocks:
        total += int(workflow[block.chain[0]]["inputs"].get("steps", 0))
        ends.append(total)
    return ends


def _has_input(schemas: SchemaSet, class_type: str, name: str) -> bool:
    return class_type in schemas and schemas[class_type].input(name) is not None


def refusal(family: ModelFamily, mode: str, schemas: SchemaSet) -> str | None:
    """Why ``family``'s nodes (as ``schemas`` declare them) cannot continue a run in ``mode``; None when they can."""
    if mode == EXACT and not _has_input(schemas, family.init_class, RESUME_INPUT):
        return (f"{family.init_class} has no {RESUME_INPUT} input, so this {family.title} run cannot "
                f"continue from its saved training state; continue with --mode {WEIGHTS}")
    if mode == WEIGHTS and not _has_input(schemas, family.models_class, WEIGHTS_INPUT):
        return (f"{family.models_class} has no {WEIGHTS_INPUT} input, so this {family.title} run cannot "
                f"continue from a checkpoint's weights; continue with --mode {EXACT} (runs started with "
                "--resumable)")
    return None


def continuation_modes(family: ModelFamily, schemas: SchemaSet) -> tuple[str, ...]:
    """The modes ``family``'s nodes can continue a run in (both, for every family at FluxTrainer 639b3e8)."""
    return tuple(mode for mode in MODES if refusal(family, mode, schemas) is None)


def build_continuation(recorded: Workflow, schemas: SchemaSet, *, from_step: int, mode: str,
                       source_path: str, output_dir: str) -> Continuation:
    """The segment that trains from ``from_step`` (a checkpoint of ``recorded``) to the end.

    ``source_path`` is, on the server, the state folder of that checkpoint (``exact``) or its ``.safetensors``
    file (``weights``); ``output_dir`` the segment's own folder on the server.
    """
    if mode not in MODES:
        raise InputError(f"continue mode {mode!r}: expected {' or '.join(MODES)}")
    workflow = copy.deepcopy(recorded)
    roles = find_roles(workflow, schemas)
    why_not = refusal(roles.family, mode, schemas)
    if why_not is not None:
        raise InputError(why_not)
    init = roles.init
    total = int(workflow[init]["inputs"].get("max_train_steps", 0))
    ends = block_end_steps(workflow, schemas)
    if from_step not in ends:
        raise InputError(f"step {from_step} is not a checkpoint of this run (checkpoints at "
                         f"{', '.join(map(str, ends))})")
    done = ends.index(from_step) + 1
    if done == len(ends):
        raise InputError(f"the run already reached its last step ({from_step}): nothing to continue")
    # drop the blocks already trained; the first remaining one follows the prefix (or Init) directly
    for block in roles.blocks[:done]:
        for nid in block.nodes:
            del workflow[nid]
    first = roles.blocks[done].chain[0]
    previous = roles.prefix[-1] if roles.prefix else init
    workflow[first]["inputs"]["network_trainer"] = [previous, 0]

    inputs = workflow[init]["inputs"]
    inputs["output_dir"] = output_dir
    notes: list[str] = []
    if mode == EXACT:
        (resume,) = fresh_ids(workflow, 1)
        workflow[resume] = {"inputs": {"load_state_path": source_path, "skip_until_initial_step": True},
                            "class_type": RESUME, "_meta": {"title": f"Resume the training state of step {from_step}"}}
        inputs[RESUME_INPUT] = [resume, 0]
        for block in roles.blocks[done:]:
            for nid in block.chain:
                if workflow[nid]["class_type"] == SAVE:
                    workflow[nid]["inputs"]["save_state"] = True  # the next continuation needs it too
    else:
        models = _model_select(workflow, init, roles.family)
        (weights,) = fresh_ids(workflow, 1)
        workflow[weights] = {"inputs": {"value": source_path}, "class_type": "PrimitiveString",
                             "_meta": {"title": f"LoRA weights of step {from_step}"}}
        workflow[models]["inputs"][WEIGHTS_INPUT] = [weights, 0]
        inputs["max_train_steps"] = total - from_step
        notes.append(f"weights only: training goes on from the LoRA of step {from_step} with a fresh optimizer "
                     f"and a fresh learning-rate schedule over the remaining {total - from_step} steps, so the "
                     "result is close to, not the same as, one uninterrupted run")
    return Continuation(workflow, mode, from_step, total, tuple(ends[done:]), output_dir, tuple(notes))


def _model_select(workflow: Workflow, init: str, family: ModelFamily) -> str:
    source = workflow[init]["inputs"].get(family.models_input)
    if not is_link(source) or workflow.get(source[0], {}).get("class_type") != family.models_class:
        raise InputError(f"node {init} {family.init_class}: {family.models_input} does not come from a "
                         f"{family.models_class} node, whose {WEIGHTS_INPUT} carries the weights to continue from")
    return str(source[0])
