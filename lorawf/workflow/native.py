"""The native trainer's workflows: one API-format prompt per checkpoint segment, from ComfyUI's own nodes. Pure.

ComfyUI's ``TrainLoraNode`` (comfy_extras/nodes_train.py at 0.3.64) trains ``steps`` steps in one call and
writes nothing itself; a checkpoint every K steps is therefore one prompt per segment, each continuing from
the previous segment's file through ``existing_lora`` (which lists the loras folder only). The server adds
``<output>/loras`` to the loras folders at start-up (its main.py), so ``SaveLoRANode`` with a ``loras/...``
prefix makes the file reachable for the next segment, where it is listed as ``lorawf/<run>/<file>``.

One segment's graph, every node titled::

    base model loaders -> LoadImageTextSetFromFolderNode (the uploaded folder, captions encoded with the CLIP)
      -> VAEEncode -> TrainLoraNode (steps of this segment, existing_lora = the previous segment's file)
      -> SaveLoRANode (prefix loras/lorawf/<run>/<run>, steps = TrainLoraNode's running total)
      -> LossGraphNode (a PNG in temp/)
      -> LoraModelLoader on the base model -> per prompt: CLIPTextEncode -> KSampler -> VAEDecode
      -> ImageBatch ... -> one SaveImage ``lorawf/<run>/validation/val_step<NNNNN>`` (counters 1..N in prompt
         order, the names the contact sheet reads for every trainer).

ComfyUI caches node outputs between prompts, so the loaders, the dataset and its latents are computed once per
run and only the training and validation run again in later segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorawf.training import native
from lorawf.training.families import FAMILIES, NATIVE
from lorawf.training.plan import TrainingPlan

Workflow = dict[str, Any]
NONE_LORA = "[None]"  # TrainLoraNode.existing_lora for a new LoRA
RESOLUTION = 1024  # every image is stretched to it: the native loader batches one tensor of one size
RESIZE_METHOD = "Stretch"
LORA_SUBFOLDER = "loras"  # SaveLoRANode's prefix starts here: <output>/loras is one of the server's loras folders

#: class_type -> the file inputs of the family's loaders (for --set-model and the messages).
LOADER_FILES: dict[str, tuple[str, ...]] = {
    "UNETLoader": ("unet_name",), "DualCLIPLoader": ("clip_name1", "clip_name2"), "VAELoader": ("vae_name",),
    "CheckpointLoaderSimple": ("ckpt_name",), "TripleCLIPLoader": ("clip_name1", "clip_name2", "clip_name3"),
}


@dataclass(frozen=True)
class Sampling:
    """How a family's validation images are rendered with the core sampler."""

    steps: int
    cfg: float
    sampler: str
    scheduler: str
    size: int
    latent_class: str  # EmptyLatentImage (4-channel SDXL) or EmptySD3LatentImage (16-channel Flux / SD3)
    guidance: float | None = None  # Flux: FluxGuidance on the positive conditioning
    shift: float | None = None  # SD 3.5: ModelSamplingSD3
    negative: str = ""


SAMPLING: dict[str, Sampling] = {
    "flux": Sampling(20, 1.0, "euler", "simple", 512, "EmptySD3LatentImage", guidance=3.5),
    "sdxl": Sampling(25, 7.0, "euler_ancestral", "normal", 1024, "EmptyLatentImage",
                     negative="blurry, low quality, worst quality, jpeg artifacts, watermark, text"),
    "sd35": Sampling(28, 4.5, "dpmpp_2m", "sgm_uniform", 1024, "EmptySD3LatentImage", shift=3.0),
}

#: The base-model files each family loads, by default (the names of the bundled FluxTrainer templates).
DEFAULT_MODEL_FILES: dict[str, dict[str, str]] = {
    "flux": {"unet_name": "flux1-dev.safetensors", "clip_name1": "clip_l.safetensors",
             "clip_name2": "t5xxl_fp16.safetensors", "vae_name": "ae.safetensors"},
    "sdxl": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
    "sd35": {"ckpt_name": "sd3.5_large.safetensors", "clip_name1": "clip_l.safetensors",
             "clip_name2": "clip_g.safetensors", "clip_name3": "t5xxl_fp16.safetensors"},
}


@dataclass(frozen=True)
class NativeRun:
    """What every segment of one native run shares."""

    name: str  # the run name: LoRA prefix, server subfolders
    model: str  # family name
    dataset_folder: str  # LoadImageTextSetFromFolderNode.folder: a folder under ComfyUI's input folder
    prompts: tuple[str, ...]  # validation prompts, the trigger token already in
    model_files: tuple[tuple[str, str], ...] = ()  # (loader input, file) overriding DEFAULT_MODEL_FILES
    seed: int = 0  # the training seed of segment 1; segment k trains with seed + k - 1
    validation_seed: int = 42  # the same for every segment, so the sheet compares like with like

    @property
    def lora_prefix(self) -> str:
        """SaveLoRANode.prefix (relative to the output folder)."""
        return f"{LORA_SUBFOLDER}/lorawf/{self.name}/{self.name}"

    @property
    def listed_prefix(self) -> str:
        """How TrainLoraNode.existing_lora lists this run's files (relative to ``<output>/loras``)."""
        return f"lorawf/{self.name}/{self.name}_"

    def files(self) -> dict[str, str]:
        return {**DEFAULT_MODEL_FILES[self.model], **dict(self.model_files)}


def segment_bounds(plan: TrainingPlan, index: int) -> tuple[int, int]:
    """(first step before, last step) of segment ``index`` (0-based): segment 0 of 1720/250 is (0, 250)."""
    steps = plan.checkpoint_steps
    return (steps[index - 1] if index else 0), steps[index]


def saved_name(listed: list[str] | tuple[str, ...], run: NativeRun, step: int) -> str | None:
    """The file SaveLoRANode wrote for ``step``, as ``existing_lora`` lists it; the newest if several.

    SaveLoRANode names ``<prefix>_<steps>_steps_<counter>_.safetensors``; the counter comes from ComfyUI's
    save-path rule, which reads the digits after the prefix (the steps of an earlier file), so it is found in
    the list, not predicted.
    """
    head = f"{run.listed_prefix}{step}_steps_"
    found = [n for n in listed if n.replace("\\", "/").startswith(head) and n.endswith("_.safetensors")]
    return max(found, key=lambda n: (len(n), n)) if found else None


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}


def _loaders(run: NativeRun) -> tuple[Workflow, list[Any], list[Any], list[Any]]:
    """The family's loaders and the (model, clip, vae) links they give."""
    files = run.files()
    title = FAMILIES[run.model].title
    if run.model == "flux":
        graph = {
            "1": _node("UNETLoader", f"Base model: {title} transformer (file on the server)",
                       unet_name=files["unet_name"], weight_dtype="default"),
            "2": _node("DualCLIPLoader", "Text encoders: CLIP-L and T5 (files on the server)",
                       clip_name1=files["clip_name1"], clip_name2=files["clip_name2"], type="flux", device="default"),
            "3": _node("VAELoader", "VAE (file on the server)", vae_name=files["vae_name"]),
        }
        return graph, ["1", 0], ["2", 0], ["3", 0]
    graph = {"1": _node("CheckpointLoaderSimple", f"Base model: {title} checkpoint (file on the server)",
                        ckpt_name=files["ckpt_name"])}
    if run.model == "sd35":
        graph["2"] = _node("TripleCLIPLoader", "Text encoders: CLIP-L, CLIP-G and T5 (files on the server)",
                           clip_name1=files["clip_name1"], clip_name2=files["clip_name2"],
                           clip_name3=files["clip_name3"])
        return graph, ["1", 0], ["2", 0], ["1", 2]
    return graph, ["1", 0], ["1", 1], ["1", 2]


def segment_workflow(run: NativeRun, plan: TrainingPlan, index: int, existing_lora: str | None) -> Workflow:
    """The API-format prompt of segment ``index`` (0-based), continuing from ``existing_lora`` (a name as the
    loras folder lists it; None for the first segment)."""
    if plan.trainer != NATIVE:
        raise ValueError(f"a native segment needs a plan for the native trainer, not {plan.trainer!r}")
    if (index == 0) != (existing_lora is None):
        raise ValueError("segment 1 starts a new LoRA; every later segment continues from the previous one")
    start, end = segment_bounds(plan, index)
    sampling = SAMPLING[run.model]
    graph, model, clip, vae = _loaders(run)
    graph["10"] = _node("LoadImageTextSetFromFolderNode", "Training images and captions (folder under input/)",
                        folder=run.dataset_folder, clip=clip, resize_method=RESIZE_METHOD, width=RESOLUTION,
                        height=RESOLUTION)
    graph["11"] = _node("VAEEncode", "Training latents", pixels=["10", 0], vae=vae)
    graph["20"] = _node(
        "TrainLoraNode", f"Train LoRA steps {start + 1}-{end} (segment {index + 1}/{len(plan.checkpoint_steps)})",
        model=model, latents=["11", 0], positive=["10", 1], batch_size=plan.batch_size, grad_accumulation_steps=1,
        steps=end - start, learning_rate=plan.learning_rate, rank=plan.network_dim, optimizer=plan.optimizer,
        loss_function=native.LOSS_FUNCTION, seed=run.seed + index, training_dtype=native.TRAINING_DTYPE,
        lora_dtype=native.LORA_DTYPE, algorithm=native.ALGORITHM, gradient_checkpointing=True,
        existing_lora=existing_lora or NONE_LORA)
    graph["21"] = _node("SaveLoRANode", f"Save LoRA checkpoint @ step {end}", lora=["20", 1],
                        prefix=run.lora_prefix, steps=["20", 3])
    graph["22"] = _node("LossGraphNode", f"Loss graph, steps {start + 1}-{end}", loss=["20", 2],
                        filename_prefix=f"lorawf_{run.name}_loss_step{end:05d}")
    base = model
    if sampling.shift is not None:
        graph["30"] = _node("ModelSamplingSD3", "Sampling shift for validation", model=model, shift=sampling.shift)
        base = ["30", 0]
    graph["31"] = _node("LoraModelLoader", f"Apply the LoRA of step {end}", model=base, lora=["20", 1],
                        strength_model=1.0)
    graph["32"] = _node(sampling.latent_class, "Validation latent", width=sampling.size, height=sampling.size,
                        batch_size=1)
    graph["33"] = _node("CLIPTextEncode", "Negative validation prompt", clip=clip, text=sampling.negative)
    batch: list[Any] | None = None
    for i, text in enumerate(run.prompts):
        nid = 100 + 10 * i
        positive: list[Any] = [str(nid), 0]
        graph[str(nid)] = _node("CLIPTextEncode", f"Validation prompt {i + 1}", clip=clip, text=text)
        if sampling.guidance is not None:
            graph[str(nid + 1)] = _node("FluxGuidance", f"Guidance, prompt {i + 1}", conditioning=positive,
                                        guidance=sampling.guidance)
            positive = [str(nid + 1), 0]
        graph[str(nid + 2)] = _node(
            "KSampler", f"Validation image {i + 1} @ step {end}", model=["31", 0], seed=run.validation_seed,
            steps=sampling.steps, cfg=sampling.cfg, sampler_name=sampling.sampler, scheduler=sampling.scheduler,
            positive=positive, negative=["33", 0], latent_image=["32", 0], denoise=1.0)
        graph[str(nid + 3)] = _node("VAEDecode", f"Decode validation image {i + 1}", samples=[str(nid + 2), 0],
                                    vae=vae)
        image: list[Any] = [str(nid + 3), 0]
        if batch is None:
            batch = image
        else:
            graph[str(nid + 4)] = _node("ImageBatch", f"Validation images 1-{i + 1}", image1=batch, image2=image)
            batch = [str(nid + 4), 0]
    if batch is not None:
        graph["90"] = _node("SaveImage", f"Validation images @ step {end}", images=batch,
                            filename_prefix=f"lorawf/{run.name}/validation/val_step{end:05d}")
    return graph
