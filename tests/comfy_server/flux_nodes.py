"""Simulated ComfyUI-FluxTrainer nodes (639b3e8): the observable behaviour, no GPU.

Files, names, return values and step semantics follow docs/fluxtrainer.md (§4, §5, §6, §8):
``InitFluxLoRATraining`` writes ``<output_name>_args.json``/``_workflow.json``; ``FluxTrainLoop`` runs
``training_loop`` passes of L steps up to its target (the step that reaches the target is not
reported as progress); ``FluxTrainSave``/``FluxTrainEnd`` write small fake ``.safetensors``;
``FluxTrainValidate`` writes PNGs under ``<output_dir>/sample/`` and returns an IMAGE batch.
0-byte model files fail in Init as recorded (``SafetensorError: ... header too small``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from tests.comfy_server.executor import NodeContext, NodeFunc, NodeOutput, SimulatedError
from tests.comfy_server.nodes import FakeImage, ImageBatch
from tests.comfy_server.paths import IMAGE_EXTENSIONS

_MODEL_FOLDERS = {
    "transformer": "diffusion_models",
    "vae": "vae",
    "clip_l": "text_encoders",
    "t5": "text_encoders",
}


@dataclass
class Trainer:
    """The NETWORKTRAINER object, shared (by reference) along the chain like the real one."""

    name: str
    output_dir: str  # as given
    output_path: str  # resolved on the server
    max_train_steps: int
    steps_per_pass: int
    sample_prompts: str
    save_dtype: str
    network_dim: int
    global_step: int = 0
    epoch: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"<FluxNetworkTrainer {self.name} step {self.global_step}>"


def fake_safetensors(metadata: dict[str, str]) -> bytes:
    header = json.dumps({"__metadata__": metadata}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def model_select(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    paths = ctx.server.paths
    models = {
        k: paths.model_path(folder, str(args[k])) or str(args[k]) for k, folder in _MODEL_FOLDERS.items()
    }
    models["lora_path"] = args.get("lora_path") or ""
    return NodeOutput((models,))


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


async def init_lora(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    output_name = str(args["output_name"])
    output_dir = str(args["output_dir"])
    resolved = ctx.server.paths.resolve_server_path(output_dir)
    os.makedirs(resolved, exist_ok=True)
    dataset = args["dataset"]
    steps_per_pass = sum(
        math.ceil(d["_images"] * d["subsets"][0]["num_repeats"] / max(1, d["batch_size"]))
        for d in dataset["datasets"]
    )
    if steps_per_pass <= 0:
        raise SimulatedError(
            "'FluxNetworkTrainer' object has no attribute 'num_train_epochs'", "AttributeError"
        )
    kohya_args = {
        k: v
        for k, v in args.items()
        if k not in ("flux_models", "dataset", "optimizer_settings", "prompt", "extra_pnginfo")
    }
    kohya_args["output_name"] = f"{output_name}_rank{args['network_dim']}_{args['save_dtype']}"
    kohya_args["pretrained_model_name_or_path"] = args["flux_models"]["transformer"]
    kohya_args["optimizer"] = args["optimizer_settings"]
    _write(os.path.join(resolved, f"{output_name}_args.json"), json.dumps(kohya_args, indent=4).encode())
    extra = args.get("extra_pnginfo")
    workflow = extra["workflow"] if isinstance(extra, dict) else args.get("prompt")
    _write(os.path.join(resolved, f"{output_name}_workflow.json"), json.dumps(workflow, indent=4).encode())
    for key in ("transformer", "vae", "clip_l", "t5"):
        path = args["flux_models"][key]
        if os.path.isfile(path) and os.path.getsize(path) < 8:
            raise SimulatedError(
                "Error while deserializing header: header too small",
                "safetensors._safetensors_rust.SafetensorError",
            )
    await ctx.sleep(ctx.server.config["step_delay"])
    n = int(args["max_train_steps"])
    trainer = Trainer(
        name=kohya_args["output_name"],
        output_dir=output_dir,
        output_path=resolved,
        max_train_steps=n,
        steps_per_pass=steps_per_pass,
        sample_prompts=str(args["sample_prompts"]),
        save_dtype=str(args["save_dtype"]),
        network_dim=int(args["network_dim"]),
    )
    trainer.metadata = {"ss_network_dim": str(trainer.network_dim), "ss_max_train_steps": str(n)}
    return NodeOutput((trainer, math.ceil(n / steps_per_pass), kohya_args))


async def train_loop(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    trainer: Trainer = args["network_trainer"]
    steps = int(args["steps"])
    target = trainer.global_step + steps
    counted = 0
    while trainer.global_step < target:
        trainer.epoch += 1  # one training_loop call = one (possibly partial) dataloader pass
        for _ in range(trainer.steps_per_pass):
            ctx.check_interrupt()
            await ctx.sleep(ctx.server.config["step_delay"])
            trainer.global_step += 1
            if trainer.global_step >= target:
                break  # the step that reaches the break target is not reported
            counted += 1
            await ctx.progress(counted, steps)
        if trainer.global_step >= trainer.max_train_steps:
            break
    return NodeOutput((trainer, trainer.global_step))


async def train_save(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    trainer: Trainer = args["network_trainer"]
    file = f"{trainer.name}-step{trainer.global_step:05d}.safetensors"
    data = fake_safetensors({**trainer.metadata, "ss_steps": str(trainer.global_step)})
    _write(os.path.join(trainer.output_path, file), data)
    if args.get("save_state"):
        os.makedirs(
            os.path.join(trainer.output_path, f"{trainer.name}-step{trainer.global_step:05d}-state"),
            exist_ok=True,
        )
    if args.get("copy_to_comfy_lora_folder"):
        dest = ctx.server.paths.root / "models" / "loras" / "flux_trainer"
        os.makedirs(dest, exist_ok=True)
        shutil.copyfile(os.path.join(trainer.output_path, file), dest / file)
    return NodeOutput((trainer, os.path.join(trainer.output_dir, file), trainer.global_step))


async def validation_settings(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    return NodeOutput((dict(args),))


async def train_validate(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    trainer: Trainer = args["network_trainer"]
    settings = args.get("validation_settings") or {}
    width = max(64, int(settings.get("width", 512)) // 16 * 16)
    height = max(64, int(settings.get("height", 512)) // 16 * 16)
    seed = settings.get("seed")
    pieces = trainer.sample_prompts.split("|") if "|" in trainer.sample_prompts else [trainer.sample_prompts]
    prompts = [p.strip() for p in pieces if p.strip() and not p.strip().startswith("#")]
    sample_dir = os.path.join(trainer.output_path, "sample")
    os.makedirs(sample_dir, exist_ok=True)
    ts = time.strftime("%Y%m%d%H%M%S", time.localtime())
    seed_suffix = "" if seed is None else f"_{seed}"
    batch = ImageBatch()
    for i, _prompt in enumerate(prompts):
        await ctx.sleep(ctx.server.config["step_delay"])
        image = FakeImage(width, height, ((37 * i) % 256, 128, (trainer.global_step * 7) % 256))
        name = f"{trainer.name}_e{trainer.epoch:06d}_{i:02d}_{ts}{seed_suffix}.png"
        _write(os.path.join(sample_dir, name), image.png())
        batch.append(image)
    return NodeOutput((trainer, batch))


async def train_end(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    trainer: Trainer = args["network_trainer"]
    epochs = math.ceil(trainer.max_train_steps / trainer.steps_per_pass)
    metadata = {
        **trainer.metadata,
        "ss_steps": str(trainer.global_step),
        "ss_epoch": str(epochs),
        "ss_training_finished_at": str(time.time()),
    }
    if args.get("save_state"):
        os.makedirs(os.path.join(trainer.output_path, f"{trainer.name}-state"), exist_ok=True)
    file = f"{trainer.name}.safetensors"
    _write(os.path.join(trainer.output_path, file), fake_safetensors(metadata))
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
}
