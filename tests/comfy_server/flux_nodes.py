"""Simulated ComfyUI-FluxTrainer nodes (639b3e8): the observable behaviour, no GPU.

Files, names, return values and step semantics follow docs/fluxtrainer.md (§4, §5, §6, §8):
``InitFluxLoRATraining`` writes ``<output_name>_args.json``/``_workflow.json``; ``FluxTrainLoop`` runs
``training_loop`` passes of L steps up to its target (the step that reaches the target is not
reported as progress); ``FluxTrainSave``/``FluxTrainEnd`` write small fake ``.safetensors``;
``FluxTrainValidate`` writes PNGs under ``<output_dir>/sample/`` and returns an IMAGE batch.
0-byte model files fail in Init as recorded (``SafetensorError: ... header too small``).

The three LoRA families (nodes.py, nodes_sdxl.py, nodes_sd3.py; docs/fluxtrainer.md §9.5): ``SDXLModelSelect``
(``checkpoint`` from ``checkpoints``), ``SD3ModelSelect`` (``transformer`` from ``checkpoints``, ``clip_l``/
``clip_g``/``t5`` from ``clip``) and their ``InitSDXLLoRATraining``/``InitSD3LoRATraining`` run the same
``init_training`` as the Flux Init, with the differences in :class:`InitSpec` (read from the source). All three
return the same NETWORKTRAINER, so ``FluxTrainLoop``/``FluxTrainSave``/``FluxTrainEnd`` (and the resume and
``lora_path`` behaviour: kohya's shared ``train_network.NetworkTrainer.init_train``) are the same for every
family. What each Init dumps into ``<output_name>_args.json`` is the kohya arguments its ``config_dict`` sets
(not argparse's other defaults), as the source builds them: ``sample_prompts`` split on ``|`` (SDXL adds
``negative_prompts``), ``output_name`` = ``{output_name}_rank{dim}_{save_dtype}``, the model paths under the
family's keys, the Init's other inputs as given (SD3's ``"training_shift "`` keeps its trailing space, so
kohya's own ``training_shift`` stays at its default 1.0 unless ``additional_args`` has ``--training_shift``),
``network_weights`` from ``lora_path``, then optimizer, loss and resume args; ``dataset_config`` is the dataset
JSON (kohya gets it as TOML). ``<output_name>_workflow.json`` is ``extra_pnginfo["workflow"]``, ``{}`` without
``extra_pnginfo``. Validation: ``FluxTrainValidate`` calls ``sample_images(epoch, step, settings)`` (Flux's and
SD3's trainer signature; an SDXL trainer fails with a ``TypeError``), ``SDXLTrainValidate`` the SDXL one (a
Flux or SD3 trainer fails likewise); each sampler reads its own validation-settings keys (a missing one is a
``KeyError``) and rounds sizes down to 16 (Flux) or 8 (SDXL, SD3).

Continuing a run (docs/fluxtrainer.md §5.5, §5.6):

* ``FluxTrainSave(save_state=true)`` writes ``<name>-step{g:05d}-state/`` and ``FluxTrainEnd(save_state=true)``
  ``<name>-state/`` (before ``<name>.safetensors``), each with ``model.safetensors``, ``optimizer.bin``,
  ``scheduler.bin``, ``random_states_0.pkl`` (and ``scaler.pt`` for ``gradient_dtype`` fp16) and
  ``train_state.json`` ``{"current_epoch": <pass counter>, "current_step": g}``. As in kohya, ``current_step`` is
  ``current_step.value + 1``, i.e. g after any training, but 1 when no batch ran since Init. Existing files
  are overwritten silently.
* ``FluxTrainResume`` returns ``{"resume": load_state_path, "skip_until_initial_step": bool}`` and checks
  nothing; Init applies it last. ``FluxTrainModelSelect.lora_path`` becomes ``network_weights``.
* Init, after writing its two JSON dumps and checking the model files: a missing ``lora_path`` fails
  (``FileNotFoundError``, ``No such file or directory: "<path>"`` for ``.safetensors``, ``[Errno 2] ...
  '<path>'`` otherwise); a ``resume`` path that is not a folder fails (``ValueError: Tried to find <path> but
  folder does not exist``, ``~`` expanded); then ``train_state.json`` (if present) gives S; a missing
  ``model.safetensors`` (and no ``pytorch_model.bin``) fails with ``FileNotFoundError: [Errno 2] No such file or
  directory: '<path>/pytorch_model.bin'``, likewise ``optimizer.bin``, ``scheduler.bin`` (and ``scaler.pt`` for
  fp16); a missing ``random_states_0.pkl`` is tolerated; then S > 0 with ``max_train_steps`` <= S fails with
  ``AssertionError: max_train_steps should be greater than initial step: N vs S``.
* After every Init the trainer's step g and pass counter start at 0: loops stay relative, names and
  ``ss_steps`` use g. A resumed trainer keeps S and the scheduler position read from the state's
  ``scheduler.bin`` (equal to S for a state written without a resume, S + g after one) plus the state's base
  LR; ``skip_until_initial_step`` only shortens the first pass by S mod L batches (pass boundaries).

Test-only observability (not FluxTrainer): every fake ``.safetensors`` written (step files, final file, a state's
``model.safetensors``) carries ``__metadata__["fake_trainer"]``, a JSON string (see :meth:`Trainer.record`) with
``global_step`` (g), ``resumed_from_step`` (S or null), ``resumed_from`` (state path or null), ``scheduler_step``
(the LR schedule position, S + g after a first resume), ``weights_from`` (``lora_path`` or null),
``trained_steps`` (optimizer steps in the weights, counting those of the ``lora_path`` file or state model when
they are fake files themselves, else null) and ``base_lr``; a state's ``scheduler.bin`` is JSON with
``last_epoch`` (the schedule position). Every ``FluxTrainLoop`` appends an entry to the server's
``training_log`` (``ComfyServer.state()["training_log"]``), see :func:`train_loop`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.comfy_server.executor import (
    InterruptProcessing,
    IsChangedFunc,
    NodeContext,
    NodeFunc,
    NodeOutput,
    SimulatedError,
)
from tests.comfy_server.nodes import FakeImage, ImageBatch
from tests.comfy_server.paths import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from tests.comfy_server.app import ServerState


class FluxNetworkTrainer:
    """The signature of kohya's trainer's ``sample_images`` (flux_train_network_comfy.py:244): a validate node
    that calls it with the other family's arguments gets Python's own ``TypeError``."""

    def sample_images(self, epoch: Any, global_step: Any, validation_settings: Any) -> None:
        return None


class Sd3NetworkTrainer:
    """sd3_train_network.py:301: the Flux signature."""

    def sample_images(self, epoch: Any, global_step: Any, validation_settings: Any) -> None:
        return None


class SdxlNetworkTrainer:
    """sdxl_train_network.py:210."""

    def sample_images(self, accelerator: Any, args: Any, epoch: Any, global_step: Any, device: Any, vae: Any,
                      tokenizer: Any, text_encoder: Any, unet: Any, validation_settings: Any = None) -> None:
        return None


@dataclass(frozen=True)
class InitSpec:
    """What differs between FluxTrainer's three LoRA ``Init*`` nodes and their kohya trainers.

    The rest of ``init_training`` is the same code three times (nodes.py:483-642, nodes_sdxl.py:99-249,
    nodes_sd3.py:108-262), and all three trainers run ``train_network.NetworkTrainer.init_train``."""

    family: str  # lorawf's name of the family (lorawf/training/families.py)
    init_class: str
    kohya: type  # kohya's trainer class (its name and its ``sample_images`` signature)
    models_input: str
    model_args: tuple[tuple[str, str], ...]  # kohya argument <- model-select key; the first is the base model
    loads: tuple[str, ...]  # the model-select files ``load_target_model`` reads, in that order
    named: frozenset[str]  # ``init_training``'s own parameters: every other input lands in ``**kwargs``
    network_module: str
    network_config: bool  # has a ``network_config`` input (and puts ``network_args`` into its config)
    t5: bool  # a T5 text encoder: ``t5xxl_max_token_length``, ``fp8_base_unet`` and ``train_t5xxl``
    text_encoder_lrs: tuple[str, ...]  # the inputs of ``text_encoder_lr`` when a text encoder trains
    late_network_args: bool  # the block/T5 ``network_args`` are added after the config is applied (Flux)
    negative_prompts: bool  # SDXL's ``sample_prompts_neg`` (dumped as ``negative_prompts``, never sampled)
    torch_loads_other_files: bool  # a base model that is not ``.safetensors`` goes through ``torch.load``
    parser_defaults: tuple[tuple[str, float], ...] = ()  # argparse defaults the node's inputs do not reach
    settings_keys: tuple[str, ...] = ("steps", "width", "height", "guidance_scale", "seed")  # in reading order
    size_multiple: int = 8  # the sampler rounds width and height down to this

    @property
    def trainer_class(self) -> str:
        return self.kohya.__name__

    @property
    def prompt_input(self) -> str:
        return "sample_prompts_pos" if self.negative_prompts else "sample_prompts"


_NAMED = frozenset({  # the parameters all three init_training have
    "dataset", "optimizer_settings", "output_name", "attention_mode", "gradient_dtype", "save_dtype",
    "additional_args", "resume_args", "train_text_encoder", "gradient_checkpointing", "prompt", "extra_pnginfo",
    "clip_l_lr", "loss_args",
})
FLUX_INIT = InitSpec(  # nodes.py:483-485, flux_train_network_comfy.py:54-98, flux_train_utils.py:128-137
    family="flux", init_class="InitFluxLoRATraining", kohya=FluxNetworkTrainer, models_input="flux_models",
    model_args=(("pretrained_model_name_or_path", "transformer"), ("clip_l", "clip_l"), ("t5xxl", "t5"),
                ("ae", "vae")),
    loads=("transformer", "clip_l", "t5", "vae"),
    named=_NAMED | {"flux_models", "sample_prompts", "block_args", "T5_lr", "network_config"},
    network_module=".networks.lora_flux", network_config=True, t5=True, text_encoder_lrs=("clip_l_lr", "T5_lr"),
    late_network_args=True, negative_prompts=False, torch_loads_other_files=False,
    settings_keys=("steps", "width", "height", "guidance_scale", "seed", "base_shift", "max_shift", "shift"),
    size_multiple=16,
)
# nodes_sdxl.py:99-101 (block_args is no parameter: it lands in kwargs), sdxl_train_util.py:66-82, the sampler
# train_util.py:6122-6128
SDXL_INIT = InitSpec(
    family="sdxl", init_class="InitSDXLLoRATraining", kohya=SdxlNetworkTrainer, models_input="SDXL_models",
    model_args=(("pretrained_model_name_or_path", "checkpoint"),), loads=("checkpoint",),
    named=_NAMED | {"SDXL_models", "sample_prompts_pos", "sample_prompts_neg", "clip_g_lr", "network_config"},
    network_module=".networks.lora", network_config=True, t5=False, text_encoder_lrs=("clip_l_lr", "clip_g_lr"),
    late_network_args=False, negative_prompts=True, torch_loads_other_files=True,
    settings_keys=("steps", "width", "height", "guidance_scale", "sampler", "seed"),
)
SD3_INIT = InitSpec(  # nodes_sd3.py:108-110, sd3_train_network.py:62-131, sd3_train_utils.py:472-506
    family="sd35", init_class="InitSD3LoRATraining", kohya=Sd3NetworkTrainer, models_input="sd3_models",
    model_args=(("pretrained_model_name_or_path", "transformer"), ("clip_l", "clip_l"), ("clip_g", "clip_g"),
                ("t5xxl", "t5")),
    loads=("transformer", "clip_l", "clip_g", "t5"),
    named=_NAMED | {"sd3_models", "sample_prompts", "block_args", "clip_g_lr", "T5_lr"},
    network_module=".networks.lora_sd3", network_config=False, t5=True,
    text_encoder_lrs=("clip_l_lr", "clip_g_lr", "T5_lr"), late_network_args=False, negative_prompts=False,
    torch_loads_other_files=False,
    parser_defaults=(("training_shift", 1.0),),  # sd3_train_utils.py:238-243; the input is "training_shift "
)


@dataclass
class Trainer:
    """The NETWORKTRAINER object, shared (by reference) along the chain like the real one."""

    name: str
    output_dir: str  # as given
    output_path: str  # resolved on the server
    max_train_steps: int
    steps_per_pass: int
    sample_prompts: list[str]  # kohya's args.sample_prompts: the Init's prompts split on '|'
    save_dtype: str
    network_dim: int
    spec: InitSpec = FLUX_INIT  # which Init made it (its family and kohya trainer class)
    gradient_dtype: str = "fp32"
    global_step: int = 0  # g: restarts at 0 after every Init, resumed or not
    epoch: int = 0  # kohya's current_epoch: training_loop calls (passes started)
    last_batch_step: int = 0  # kohya's current_step.value: g when the last batch began
    metadata: dict[str, str] = field(default_factory=dict)
    # where the run continues from
    resume_path: str | None = None  # resume_args["resume"] as given
    resumed_from_step: int | None = None  # S: train_state.json current_step of that state
    scheduler_offset: int = 0  # the LR scheduler's step count restored from the state
    base_lr: float = 0.0  # restored from the state when resuming
    weights_from: str | None = None  # lora_path (network_weights) as given
    weights_steps: int | None = 0  # optimizer steps already in the starting weights (None: unknown)
    skip_batches: int = 0  # skip_until_initial_step: batches the first pass discards
    init_prompt_id: str = ""

    def __str__(self) -> str:
        return f"<{self.spec.trainer_class} {self.name} step {self.global_step}>"

    @property
    def scheduler_step(self) -> int:
        """The LR schedule position: the restored scheduler count plus the steps trained since Init."""
        return self.scheduler_offset + self.global_step

    def record(self) -> dict[str, Any]:
        """What a fake checkpoint says about how it came about (test-only, see the module docstring)."""
        return {
            "global_step": self.global_step,
            "resumed_from_step": self.resumed_from_step,
            "resumed_from": self.resume_path,
            "scheduler_step": self.scheduler_step,
            "weights_from": self.weights_from,
            "trained_steps": None if self.weights_steps is None else self.weights_steps + self.global_step,
            "base_lr": self.base_lr,
        }


def fake_safetensors(metadata: dict[str, str]) -> bytes:
    header = json.dumps({"__metadata__": metadata}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


def read_fake_record(path: str) -> dict[str, Any] | None:
    """The ``fake_trainer`` record of a fake ``.safetensors`` written by this module, or None."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 1 << 20:
                return None
            header = json.loads(f.read(size))
        record = json.loads(header["__metadata__"]["fake_trainer"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _checkpoint(trainer: Trainer, metadata: dict[str, str]) -> bytes:
    return fake_safetensors({**metadata, "fake_trainer": json.dumps(trainer.record())})


def save_state(trainer: Trainer, folder: str) -> None:
    """``accelerator.save_state(folder)`` with FluxTrainer's hooks (T:722-740), small fake contents."""
    os.makedirs(folder, exist_ok=True)
    # the save hook: "+1 is needed because the state is saved before current_step is set from global_step"
    train_state = {"current_epoch": trainer.epoch, "current_step": trainer.last_batch_step + 1}
    _write(os.path.join(folder, "train_state.json"), json.dumps(train_state).encode())
    _write(os.path.join(folder, "model.safetensors"), _checkpoint(trainer, dict(trainer.metadata)))
    step = trainer.scheduler_step
    _write(os.path.join(folder, "optimizer.bin"), json.dumps({"fake": "optimizer", "step": step}).encode())
    scheduler = {
        "fake": "LambdaLR",
        "last_epoch": step,
        "_step_count": step + 1,
        "base_lrs": [trainer.base_lr],
    }
    _write(os.path.join(folder, "scheduler.bin"), json.dumps(scheduler).encode())
    if trainer.gradient_dtype == "fp16":
        _write(os.path.join(folder, "scaler.pt"), json.dumps({"fake": "GradScaler"}).encode())
    _write(os.path.join(folder, "random_states_0.pkl"), pickle.dumps({"fake": "random_states", "step": step}))


#: Each model-select node's file inputs and the model folder they are looked up in (nodes.py:55-70,
#: nodes_sdxl.py:43-52, nodes_sd3.py:46-61).
MODEL_SELECT_FOLDERS: dict[str, tuple[tuple[str, str], ...]] = {
    "FluxTrainModelSelect": (
        ("transformer", "diffusion_models"), ("vae", "vae"), ("clip_l", "text_encoders"), ("t5", "text_encoders"),
    ),
    "SDXLModelSelect": (("checkpoint", "checkpoints"),),
    "SD3ModelSelect": (
        ("transformer", "checkpoints"), ("clip_l", "text_encoders"), ("clip_g", "text_encoders"),
        ("t5", "text_encoders"),
    ),
}


def _model_select(class_type: str) -> NodeFunc:
    """``loadmodel``: ``folder_paths.get_full_path`` of every file input, and ``lora_path`` as given."""
    folders = MODEL_SELECT_FOLDERS[class_type]

    async def model_select(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
        paths = ctx.server.paths
        models = {k: paths.model_path(folder, str(args[k])) or str(args[k]) for k, folder in folders}
        models["lora_path"] = args.get("lora_path") or ""
        return NodeOutput((models,))

    model_select.__qualname__ = f"{class_type}.loadmodel"
    return model_select


model_select = _model_select("FluxTrainModelSelect")


async def dataset_general_config(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    general = {
        "shuffle_caption": args["shuffle_caption"],
        "caption_extension": args.get("caption_extension", ".txt"),
        "keep_tokens_separator": "|||",
        "caption_dropout_rate": args["caption_dropout_rate"],
        "color_aug": args["color_aug"],
        "flip_aug": args["flip_aug"],
    }
    return NodeOutput(({"general": general, "datasets": [], "alpha_mask": args["alpha_mask"]},))


async def dataset_add(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    config = json.loads(json.dumps(args["dataset_config"]))
    image_dir = str(args["dataset_path"])
    resolved = ctx.server.paths.resolve_server_path(image_dir)
    if not os.path.isdir(resolved):
        raise SimulatedError(f"{image_dir} is not a directory", "ValueError")
    images = [f for f in os.listdir(resolved) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    if not images:
        raise SimulatedError(f"no image files found in {image_dir}", "ValueError")
    config["datasets"].append(
        {
            "resolution": [args["width"], args["height"]],
            "batch_size": args["batch_size"],
            "enable_bucket": args["enable_bucket"],
            "bucket_no_upscale": args["bucket_no_upscale"],
            "min_bucket_reso": args["min_bucket_reso"],
            "max_bucket_reso": args["max_bucket_reso"],
            "subsets": [
                {
                    "image_dir": image_dir,
                    "class_tokens": args["class_tokens"],
                    "num_repeats": args["num_repeats"],
                }
            ],
            "_images": len(images),
        }
    )
    return NodeOutput((config,))


async def optimizer_config(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    extra = str(args.get("extra_optimizer_args", ""))
    settings = {k: v for k, v in args.items() if k != "extra_optimizer_args"}
    settings["optimizer_args"] = [a.strip() for a in extra.split("|") if a.strip()]
    return NodeOutput((settings,))


def general_config_is_changed(server: ServerState, inputs: dict[str, Any]) -> Any:
    """``TrainDatasetGeneralConfig.IS_CHANGED``: a class counter, bumped when ``reset_on_queue`` is true."""
    state = server.node_class_state.setdefault("TrainDatasetGeneralConfig", {"queue_counter": 0})
    if inputs.get("reset_on_queue", False):
        state["queue_counter"] += 1
    return state["queue_counter"]


async def train_resume(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``FluxTrainResume.resume`` (N:1146-1152): no checks."""
    return NodeOutput(
        ({"resume": args["load_state_path"], "skip_until_initial_step": args["skip_until_initial_step"]},)
    )


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(2, "No such file or directory", path)


def _check_lora_path(ctx: NodeContext, lora_path: str) -> int | None:
    """``network.load_weights(lora_path)`` (lora_flux.py:632-641); returns the steps in the weights if known."""
    resolved = ctx.server.paths.resolve_server_path(lora_path)
    is_safetensors = os.path.splitext(lora_path)[1] == ".safetensors"
    if not os.path.exists(resolved):
        if is_safetensors:  # safetensors < 0.6 (from 0.6 the path has no quotes)
            raise SimulatedError(f'No such file or directory: "{lora_path}"', "FileNotFoundError")
        raise _missing(lora_path)  # torch.load
    if os.path.isdir(resolved):
        raise IsADirectoryError(21, "Is a directory", lora_path)
    if is_safetensors and os.path.getsize(resolved) < 8:
        raise SimulatedError(
            "Error while deserializing header: header too small",
            "safetensors._safetensors_rust.SafetensorError",
        )
    record = read_fake_record(resolved)
    steps = None if record is None else record.get("trained_steps")
    return steps if isinstance(steps, int) else None


def _load_state(ctx: NodeContext, resume: str, gradient_dtype: str) -> dict[str, Any]:
    """``accelerator.load_state(resume)`` with FluxTrainer's load hook (T:744-761), in that order."""
    input_dir = os.path.expanduser(resume)
    resolved = ctx.server.paths.resolve_server_path(input_dir)
    if not os.path.isdir(resolved):
        raise SimulatedError(f"Tried to find {input_dir} but folder does not exist", "ValueError")
    steps_from_state = None
    train_state = os.path.join(resolved, "train_state.json")
    if os.path.exists(train_state):  # the pre-hook; a broken file raises as json/KeyError would
        with open(train_state, encoding="utf-8") as f:
            steps_from_state = json.load(f)["current_step"]
    model = os.path.join(resolved, "model.safetensors")
    if not os.path.isfile(model) and not os.path.isfile(os.path.join(resolved, "pytorch_model.bin")):
        raise _missing(os.path.join(input_dir, "pytorch_model.bin"))
    needed = ["optimizer.bin", "scheduler.bin"] + (["scaler.pt"] if gradient_dtype == "fp16" else [])
    for name in needed:
        if not os.path.isfile(os.path.join(resolved, name)):
            raise _missing(os.path.join(input_dir, name))
    # random_states_0.pkl: accelerate logs "Could not load random states" and goes on
    scheduler: dict[str, Any] = {}
    try:
        with open(os.path.join(resolved, "scheduler.bin"), encoding="utf-8") as f:
            loaded = json.load(f)
        scheduler = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass  # not one of ours: the position falls back to S
    record = read_fake_record(model) if os.path.isfile(model) else None
    weights = None if record is None else record.get("trained_steps")
    return {
        "steps_from_state": steps_from_state,
        "scheduler_step": scheduler.get("last_epoch"),
        "base_lrs": scheduler.get("base_lrs"),
        "weights_steps": weights if isinstance(weights, int) else None,
    }


_ATTENTION = {  # nodes.py:562-566 and the same in the SDXL and SD3 Inits
    "sdpa": {"mem_eff_attn": True, "xformers": False, "spda": True},
    "xformers": {"mem_eff_attn": True, "xformers": True, "spda": False},
}
_GRADIENT_DTYPE = {
    "fp16": {"full_fp16": True, "full_bf16": False, "mixed_precision": "fp16"},
    "bf16": {"full_bf16": True, "full_fp16": False, "mixed_precision": "bf16"},
}
_SAFETENSORS_ERROR = "safetensors._safetensors_rust.SafetensorError"


def split_prompts(text: str) -> list[str]:
    """The Init's ``sample_prompts``: split on ``|`` (nothing stripped or dropped here)."""
    return text.split("|") if "|" in text else [text]


def _cache_kwargs(kwargs: dict[str, Any]) -> None:
    """The cache_latents / cache_text_encoder_outputs choices as kohya flags (nodes.py:509-531)."""
    latents = kwargs.get("cache_latents")
    kwargs["cache_latents"] = latents in ("memory", "disk")
    kwargs["cache_latents_to_disk"] = latents == "disk"
    if latents == "disk":
        kwargs.update(caption_dropout_rate=0.0, shuffle_caption=False, token_warmup_step=0.0,
                      caption_tag_dropout_rate=0.0)
    encoders = kwargs.get("cache_text_encoder_outputs")
    kwargs["cache_text_encoder_outputs"] = encoders in ("memory", "disk")
    kwargs["cache_text_encoder_outputs_to_disk"] = encoders == "disk"


def _parser_values(spec: InitSpec, additional_args: str) -> dict[str, Any]:
    """argparse's values of ``spec.parser_defaults``, with ``additional_args`` parsed for them (shlex)."""
    values: dict[str, Any] = dict(spec.parser_defaults)
    tokens = shlex.split(additional_args) if additional_args else []
    for i, token in enumerate(tokens):
        for key, default in spec.parser_defaults:
            flag = f"--{key}"
            if token == flag and i + 1 < len(tokens):
                values[key] = type(default)(tokens[i + 1])
            elif token.startswith(flag + "="):
                values[key] = type(default)(token[len(flag) + 1:])
    return values


def kohya_config(spec: InitSpec, args: dict[str, Any]) -> dict[str, Any]:
    """The kohya arguments the Init sets (``config_dict`` and what it applies after it; nodes.py:538-616,
    nodes_sdxl.py:148-223, nodes_sd3.py:157-236): what ``<output_name>_args.json`` holds, without argparse's
    other defaults."""
    kwargs = {k: v for k, v in args.items() if k not in spec.named}
    _cache_kwargs(kwargs)
    models = args[spec.models_input]
    dataset = args["dataset"]
    network_config = args.get("network_config") if spec.network_config else None
    train_text_encoder = str(args.get("train_text_encoder", "disabled"))
    save_dtype = str(args["save_dtype"])
    config: dict[str, Any] = _parser_values(spec, str(args.get("additional_args") or ""))
    config["sample_prompts"] = split_prompts(str(args[spec.prompt_input]))
    if spec.negative_prompts:
        config["negative_prompts"] = split_prompts(str(args["sample_prompts_neg"]))
    config.update(save_precision=save_dtype, mixed_precision="bf16", num_cpu_threads_per_process=1)
    config.update({key: models[model] for key, model in spec.model_args})
    config.update(save_model_as="safetensors", persistent_data_loader_workers=False, max_data_loader_n_workers=0,
                  seed=42)
    config["network_module"] = network_config["network_module"] if network_config else spec.network_module
    config["dataset_config"] = json.dumps(
        {"general": dataset["general"],
         "datasets": [{k: v for k, v in d.items() if not k.startswith("_")} for d in dataset["datasets"]]},
        indent=2)
    config["output_name"] = f"{args['output_name']}_rank{args['network_dim']}_{save_dtype}"
    config["loss_type"] = "l2"
    if spec.t5:
        config["t5xxl_max_token_length"] = 512
    config["alpha_mask"] = dataset["alpha_mask"]
    config["network_train_unet_only"] = train_text_encoder == "disabled"
    if spec.t5:
        config["fp8_base_unet"] = "fp8" in train_text_encoder
    config["disable_mmap_load_safetensors"] = False
    if spec.network_config:
        config["network_args"] = None if network_config is None else network_config["network_args"]
    config.update(_ATTENTION.get(str(args.get("attention_mode")), {}))
    config.update(_GRADIENT_DTYPE.get(str(args.get("gradient_dtype")), {}))
    if train_text_encoder != "disabled":
        config["text_encoder_lr"] = [args.get(name, 0) for name in spec.text_encoder_lrs]
    checkpointing = args.get("gradient_checkpointing", "enabled")
    config["gradient_checkpointing"] = checkpointing != "disabled"
    if checkpointing == "enabled_with_cpu_offloading":
        config["cpu_offload_checkpointing"] = True
    if models.get("lora_path"):
        config["network_weights"] = models["lora_path"]
    config.update(kwargs)
    config.update(args["optimizer_settings"])
    for extra in ("loss_args", "resume_args"):  # resume_args last (nodes.py:594-598)
        if args.get(extra) and isinstance(args[extra], dict):
            config.update(args[extra])
    network_args: list[str] = []
    if spec.t5 and "T5" in train_text_encoder:
        network_args.append("train_t5xxl=True")
    block_args = args.get("block_args")
    if "block_args" in spec.named and block_args:  # the SDXL Init never reads them (only dumps them)
        network_args.append(block_args["include"])
    if spec.late_network_args:  # Flux: added to the config's network_args (nodes.py:604-616)
        current = config.get("network_args")
        config["network_args"] = current + network_args if isinstance(current, list) else network_args
    else:  # SDXL, SD3: set before the config is applied, so the config's own network_args win
        config.setdefault("network_args", network_args)
    return config


def _check_model_file(spec: InitSpec, path: str) -> None:
    """What loading a placeholder model file does: a file under 8 bytes is no safetensors file."""
    if not os.path.isfile(path) or os.path.getsize(path) >= 8:
        return
    if spec.torch_loads_other_files and not path.lower().endswith(".safetensors"):
        raise SimulatedError("Ran out of input", "EOFError")  # torch.load of an empty file
    raise SimulatedError("Error while deserializing header: header too small", _SAFETENSORS_ERROR)


def _init_node(spec: InitSpec) -> NodeFunc:
    async def init_lora(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
        return await _init_training(ctx, spec, args)

    init_lora.__qualname__ = f"{spec.init_class}.init_training"
    return init_lora


async def _init_training(ctx: NodeContext, spec: InitSpec, args: dict[str, Any]) -> NodeOutput:
    """``init_training`` of ``spec``'s Init node, then kohya's ``init_train`` as far as it shows."""
    output_name = str(args["output_name"])
    output_dir = str(args["output_dir"])
    resolved = ctx.server.paths.resolve_server_path(output_dir)
    os.makedirs(resolved, exist_ok=True)
    kohya_args = kohya_config(spec, args)
    _write(os.path.join(resolved, f"{output_name}_args.json"), json.dumps(kohya_args, indent=4).encode())
    workflow: dict[str, Any] = {}
    extra = args.get("extra_pnginfo")
    if extra is not None:
        workflow.update(extra["workflow"])  # a KeyError or TypeError as in the node
    _write(os.path.join(resolved, f"{output_name}_workflow.json"), json.dumps(workflow, indent=4).encode())
    dataset = args["dataset"]
    steps_per_pass = sum(
        math.ceil(d["_images"] * d["subsets"][0]["num_repeats"] / max(1, d["batch_size"]))
        for d in dataset["datasets"]
    )
    if steps_per_pass <= 0:  # init_train returns early; the node then reads num_train_epochs
        raise SimulatedError(
            f"'{spec.trainer_class}' object has no attribute 'num_train_epochs'", "AttributeError"
        )
    models = args[spec.models_input]
    for key in spec.loads:  # load_target_model
        _check_model_file(spec, str(models[key]))
    lora_path = str(models.get("lora_path") or "")
    resume = str(kohya_args.get("resume") or "")
    n = int(args["max_train_steps"])
    gradient_dtype = str(args.get("gradient_dtype", "fp32"))
    weights_steps: int | None = 0
    if lora_path:  # init_train loads network_weights first (T:513-516)
        weights_steps = _check_lora_path(ctx, lora_path)
    state: dict[str, Any] | None = None
    if resume:  # then resume_from_local_or_hf_if_specified (T:767)
        state = _load_state(ctx, resume, gradient_dtype)
        weights_steps = state["weights_steps"]  # model.safetensors replaces the lora_path weights
    steps_from_state = None if state is None else state["steps_from_state"]
    initial_step = steps_from_state or 0
    if initial_step > 0 and not n > initial_step:  # T:1033-1036
        raise SimulatedError(
            f"max_train_steps should be greater than initial step: {n} vs {initial_step}", "AssertionError"
        )
    await ctx.sleep(ctx.server.config["step_delay"])
    learning_rate = float(args.get("learning_rate", 0.0))
    trainer = Trainer(
        name=kohya_args["output_name"],
        output_dir=output_dir,
        output_path=resolved,
        max_train_steps=n,
        steps_per_pass=steps_per_pass,
        sample_prompts=list(kohya_args["sample_prompts"]),
        save_dtype=str(args["save_dtype"]),
        network_dim=int(args["network_dim"]),
        spec=spec,
        gradient_dtype=gradient_dtype,
        base_lr=learning_rate,
        weights_from=lora_path or None,
        weights_steps=weights_steps,
        init_prompt_id=ctx.prompt_id,
    )
    if state is not None:
        trainer.resume_path = resume
        trainer.resumed_from_step = steps_from_state
        scheduler_step = state["scheduler_step"]
        trainer.scheduler_offset = scheduler_step if isinstance(scheduler_step, int) else initial_step
        base_lrs = state["base_lrs"]
        if isinstance(base_lrs, list) and base_lrs and isinstance(base_lrs[0], (int, float)):
            trainer.base_lr = float(base_lrs[0])  # the base LR comes from the state
        if kohya_args.get("skip_until_initial_step") and initial_step > 0:
            trainer.skip_batches = initial_step % steps_per_pass  # T:1047-1050, T:1118-1121
    trainer.metadata = {"ss_network_dim": str(trainer.network_dim), "ss_max_train_steps": str(n)}
    return NodeOutput((trainer, math.ceil(n / steps_per_pass), kohya_args))


init_lora = _init_node(FLUX_INIT)


async def train_loop(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``FluxTrainLoop.train``: relative target g + steps, guard g >= max_train_steps.

    Appends to the server's ``training_log`` (test-only) one entry per run, also when interrupted:
    ``prompt_id``, ``node``, ``trainer`` (``<name>``), ``family`` (the Init's: ``flux``, ``sdxl`` or ``sd35``),
    ``output_dir`` (resolved), ``g_from``/``g_to`` (the relative step before and after), ``from_step``/``to_step``
    (the same as LR schedule positions: S + g after a first resume, so the steps trained are from_step + 1 ..
    to_step), ``resumed_from`` (S or None),
    ``resume_path``, ``weights_from``, ``outcome`` (``completed``, ``interrupted``, ``cancelled`` by a restart,
    ``error``) and ``restarts`` (how many restarts preceded it)."""
    trainer: Trainer = args["network_trainer"]
    steps = int(args["steps"])
    target = trainer.global_step + steps
    g_from, s_from = trainer.global_step, trainer.scheduler_step
    counted = 0
    outcome = "error"
    try:
        while trainer.global_step < target:
            trainer.epoch += 1  # one training_loop call = one (possibly partial) dataloader pass
            batches = trainer.steps_per_pass - trainer.skip_batches  # skip_until_initial_step, first pass
            trainer.skip_batches = 0
            for _ in range(batches):
                ctx.check_interrupt()
                trainer.last_batch_step = trainer.global_step
                await ctx.sleep(ctx.server.config["step_delay"])
                trainer.global_step += 1
                if trainer.global_step >= target:
                    break  # the step that reaches the break target is not reported
                counted += 1
                await ctx.progress(counted, steps)
            if trainer.global_step >= trainer.max_train_steps:
                break
        outcome = "completed"
    except InterruptProcessing:
        outcome = "interrupted"
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        ctx.server.training_log.append(
            {
                "prompt_id": ctx.prompt_id,
                "node": ctx.node_id,
                "trainer": trainer.name,
                "family": trainer.spec.family,
                "output_dir": trainer.output_path,
                "g_from": g_from,
                "g_to": trainer.global_step,
                "from_step": s_from,
                "to_step": trainer.scheduler_step,
                "resumed_from": trainer.resumed_from_step,
                "resume_path": trainer.resume_path,
                "weights_from": trainer.weights_from,
                "outcome": outcome,
                "restarts": ctx.server.epoch,
            }
        )
    return NodeOutput((trainer, trainer.global_step))


async def train_save(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    trainer: Trainer = args["network_trainer"]
    file = f"{trainer.name}-step{trainer.global_step:05d}.safetensors"
    data = _checkpoint(trainer, {**trainer.metadata, "ss_steps": str(trainer.global_step)})
    _write(os.path.join(trainer.output_path, file), data)
    if args.get("save_state"):
        save_state(
            trainer, os.path.join(trainer.output_path, f"{trainer.name}-step{trainer.global_step:05d}-state")
        )
    if args.get("copy_to_comfy_lora_folder"):
        dest = ctx.server.paths.root / "models" / "loras" / "flux_trainer"
        os.makedirs(dest, exist_ok=True)
        shutil.copyfile(os.path.join(trainer.output_path, file), dest / file)
    return NodeOutput((trainer, os.path.join(trainer.output_dir, file), trainer.global_step))


async def validation_settings(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    return NodeOutput((dict(args),))


def _prompt_dict(line: str) -> dict[str, Any]:
    """The options of a prompt line kohya's samplers read without validation settings: ``--w``, ``--h``, ``--d``
    (``line_to_prompt_dict``, train_util.py:5922-5974; the prompt is the text before the first `` --``)."""
    found: dict[str, Any] = {}
    for part in line.split(" --"):
        for key, name in (("w", "width"), ("h", "height"), ("d", "seed")):
            m = re.match(rf"{key} (\d+)", part, re.IGNORECASE)
            if m and name not in found:
                found[name] = int(m.group(1))
    return found


def _validate_node(class_type: str, arguments: int) -> NodeFunc:
    """A validate node: it calls the trainer's ``sample_images`` with ``arguments`` positional arguments
    (``FluxTrainValidate``: 3, nodes.py:1251-1268; ``SDXLTrainValidate``: 10, nodes_sdxl.py:426-451)."""

    async def train_validate(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
        trainer: Trainer = args["network_trainer"]
        settings = args.get("validation_settings")
        trainer.spec.kohya().sample_images(*([None] * (arguments - 1)), settings)  # the wrong family: TypeError
        return NodeOutput((trainer, await _sample_images(ctx, trainer, settings)))

    train_validate.__qualname__ = f"{class_type}.validate"
    return train_validate


async def _sample_images(ctx: NodeContext, trainer: Trainer, settings: dict[str, Any] | None) -> ImageBatch:
    """The family's ``sample_images``: one PNG per prompt kept (stripped, not empty, not ``#``) under
    ``<output_dir>/sample/``, named by the pass counter and the prompt's position among those kept."""
    spec = trainer.spec
    prompts = [line.strip() for line in trainer.sample_prompts]
    prompts = [line for line in prompts if line and line[0] != "#"]
    sample_dir = os.path.join(trainer.output_path, "sample")
    os.makedirs(sample_dir, exist_ok=True)
    batch = ImageBatch()
    for i, line in enumerate(prompts):
        if settings is not None:
            values = {key: settings[key] for key in spec.settings_keys}  # a missing key: KeyError, as there
            width, height, seed = int(values["width"]), int(values["height"]), values["seed"]
        else:
            options = _prompt_dict(line)
            width, height, seed = options.get("width", 512), options.get("height", 512), options.get("seed")
        width = max(64, width - width % spec.size_multiple)
        height = max(64, height - height % spec.size_multiple)
        await ctx.sleep(ctx.server.config["step_delay"])
        image = FakeImage(width, height, ((37 * i) % 256, 128, (trainer.global_step * 7) % 256))
        ts = time.strftime("%Y%m%d%H%M%S", time.localtime())
        seed_suffix = "" if seed is None else f"_{seed}"
        name = f"{trainer.name}_e{trainer.epoch:06d}_{i:02d}_{ts}{seed_suffix}.png"
        _write(os.path.join(sample_dir, name), image.png())
        batch.append(image)
    if not batch:
        raise SimulatedError("torch.cat(): expected a non-empty list of Tensors", "RuntimeError")
    return batch


train_validate = _validate_node("FluxTrainValidate", 3)


async def train_end(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    trainer: Trainer = args["network_trainer"]
    epochs = math.ceil(trainer.max_train_steps / trainer.steps_per_pass)
    metadata = {
        **trainer.metadata,
        "ss_steps": str(trainer.global_step),
        "ss_epoch": str(epochs),
        "ss_training_finished_at": str(time.time()),
    }
    if args.get("save_state"):  # before the final file (N:1113-1117)
        save_state(trainer, os.path.join(trainer.output_path, f"{trainer.name}-state"))
    file = f"{trainer.name}.safetensors"
    _write(os.path.join(trainer.output_path, file), _checkpoint(trainer, metadata))
    return NodeOutput((trainer.name, json.dumps(metadata, indent=4), os.path.join(trainer.output_dir, file)))


FLUX_NODES: dict[str, NodeFunc] = {
    "FluxTrainModelSelect": model_select,
    "TrainDatasetGeneralConfig": dataset_general_config,
    "TrainDatasetAdd": dataset_add,
    "OptimizerConfig": optimizer_config,
    "InitFluxLoRATraining": init_lora,
    "FluxTrainLoop": train_loop,
    "FluxTrainSave": train_save,
    "FluxTrainValidationSettings": validation_settings,
    "FluxTrainValidate": train_validate,
    "FluxTrainEnd": train_end,
    "FluxTrainResume": train_resume,
    # nodes_sdxl.py:453-459 and nodes_sd3.py:458-462 (SD3TrainValidate is not registered: FluxTrainValidate)
    "SDXLModelSelect": _model_select("SDXLModelSelect"),
    "InitSDXLLoRATraining": _init_node(SDXL_INIT),
    "SDXLTrainValidationSettings": validation_settings,
    "SDXLTrainValidate": _validate_node("SDXLTrainValidate", 10),
    "SD3ModelSelect": _model_select("SD3ModelSelect"),
    "InitSD3LoRATraining": _init_node(SD3_INIT),
    "SD3TrainValidationSettings": validation_settings,
}

# The FluxTrainer classes with an ``IS_CHANGED``.
FLUX_IS_CHANGED: dict[str, IsChangedFunc] = {
    "TrainDatasetGeneralConfig": general_config_is_changed,
}
