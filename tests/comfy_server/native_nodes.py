"""Simulated ComfyUI 0.3.64 native training nodes and the core nodes a native training workflow uses.

Ports of the observable behaviour of ``comfy_extras/nodes_train.py`` (``TrainLoraNode``, ``SaveLoRANode``,
``LoraModelLoader``, ``LossGraphNode``, ``LoadImageTextSetFromFolderNode``, ``LoadImageSetFromFolderNode``),
``nodes.py`` (``CheckpointLoaderSimple``, ``UNETLoader``, ``DualCLIPLoader``, ``VAELoader``, ``CLIPTextEncode``,
``VAEEncode``, ``VAEDecode``, ``EmptyLatentImage``, ``KSampler``), ``comfy_extras/nodes_sd3.py``
(``TripleCLIPLoader``, ``EmptySD3LatentImage``), ``nodes_flux.py`` (``FluxGuidance``) and
``nodes_model_advanced.py`` (``ModelSamplingSD3``), at ComfyUI 63722199 (0.3.64). No tensors: the values
passed along links are small dataclasses that tests can inspect.

What is reproduced from the source:

* loaders resolve names like ``folder_paths.get_full_path_or_raise`` (``FileNotFoundError: Model in folder
  'loras' with filename 'x' not found.``) and then read the file like ``comfy.utils.load_torch_file``
  (a ``.safetensors`` under 8 bytes fails with the recorded ``header too small`` error); any readable file
  "loads" (a real server would also detect the model type, which fake files cannot satisfy);
* ``LoadImageTextSetFromFolderNode`` lists ``input/<folder>`` with ``os.listdir`` (directory order, not
  sorted), takes ``.png/.jpg/.jpeg/.webp`` files and kohya ``N_name`` sub-folders (repeated N times), reads
  ``<image>.txt`` captions (``str.replace`` of the extension, as upstream), opens and resizes the images with
  Pillow exactly like ``load_and_process_images`` (so its errors are Pillow's and the source's), and encodes
  the captions with the 0.3.64 quirk: an image with a missing or empty caption appends the empty
  conditioning (a list) *and* extends with the encoded ``""``, so it counts twice;
* ``TrainLoraNode`` checks the conditioning count against the image count (one conditioning is repeated
  for every image), resolves ``existing_lora`` in the loras folders, parses its steps with
  ``int(existing_lora.split("_steps_")[0].split("_")[-1])``, runs ``steps * grad_accumulation_steps``
  iterations (one loss value each, as the loss callback is called per iteration) and returns
  ``(model_with_lora, lora, loss_map, steps + existing_steps)``. 0.3.64 only prints a tqdm bar: no
  ``progress`` messages and no interrupt checks during training (an interrupt is noticed by the next node).
  With the server option ``native_progress`` it behaves like later ComfyUI (``ui_pbar =
  ProgressBar(total_steps)``, ``ui_pbar.update(1)`` after each optimizer step): a ``progress`` message
  (value = optimizer steps done, max = ``steps * grad_accumulation_steps``) whose hook also checks interrupts;
* ``SaveLoRANode`` names the file through ``paths.save_path`` (``get_save_image_path``), hence the counter
  quirk: after ``<p>_10_steps_00001_.safetensors`` the next counter is parsed from the steps digits (11);
  it returns no UI, so history has no output for it;
* ``LossGraphNode`` draws the 0.3.64 graph with Pillow into ``temp/<prefix>_<%Y%m%d_%H%M%S>.png`` with the
  ``prompt``/``extra_pnginfo`` text chunks and returns ``{"ui": {"images": [...type "temp"]}}`` (one loss
  value, i.e. a single iteration, fails with ``ZeroDivisionError`` as upstream);
* ``KSampler`` sends one ``progress`` per step (``value`` 1..steps, ``max`` steps) like
  ``latent_preview.prepare_callback``; ``denoise`` 0 samples nothing and returns the latent.

Test-only observability (not ComfyUI):

* a LORA_MODEL (:class:`FakeLora`) carries a ``record`` (see :func:`train_lora`), written by ``SaveLoRANode``
  into the file's ``__metadata__["fake_trainer"]`` (read it with
  :func:`tests.comfy_server.flux_nodes.read_fake_record`);
* ``VAEDecode`` of a sampled latent gives solid images whose colour is :func:`sample_rgb` of the LoRAs on
  the sampling model and the seed, so validation images of different checkpoints differ;
* every ``TrainLoraNode`` run that reaches training appends to the server's ``training_log``
  (``kind: "native"``, see :func:`train_lora`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.comfy_server.executor import InterruptProcessing, NodeContext, NodeFunc, NodeOutput, SimulatedError
from tests.comfy_server.flux_nodes import fake_safetensors, read_fake_record
from tests.comfy_server.nodes import FakeImage, ImageBatch
from tests.comfy_server.paths import save_path

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from tests.comfy_server.paths import ComfyPaths

LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}
FOLDER_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # LoadImage(Text)SetFromFolderNode
RESIZE_MISMATCH = (
    "Your input image size does not match the first image in the dataset. Either select a valid resize "
    "method or use the same size for all images."
)
CLIP_INVALID = (
    "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint does "
    "not contain a valid clip or text encoder model."
)
SAFETENSORS_ERROR = "safetensors._safetensors_rust.SafetensorError"


# --- values passed along links --------------------------------------------------------------------------


@dataclass
class FakeLora:
    """A LORA_MODEL (upstream: the dict of trained adapter tensors); ``record`` tells how it came about."""

    record: dict[str, Any]

    @property
    def trained_steps(self) -> int:
        return int(self.record["trained_steps"])

    def __str__(self) -> str:
        return f"<LORA_MODEL {self.trained_steps} steps>"


@dataclass
class FakeModel:
    """A MODEL (``ModelPatcher``): the file it came from and what was patched onto it."""

    source: str  # "checkpoint" (CheckpointLoaderSimple) or "diffusion_model" (UNETLoader)
    name: str  # the name as given to the loader
    path: str
    weight_dtype: str = "default"
    loras: tuple[tuple[FakeLora, float], ...] = ()  # (LoRA, strength) in the order applied
    object_patches: dict[str, Any] = field(default_factory=dict)  # e.g. model_sampling from ModelSamplingSD3

    def clone(self) -> FakeModel:
        return dataclasses.replace(self, object_patches=dict(self.object_patches))

    def with_lora(self, lora: FakeLora, strength: float) -> FakeModel:
        model = self.clone()
        model.loras = (*self.loras, (lora, strength))
        return model

    def __str__(self) -> str:
        return f"<comfy.model_patcher.ModelPatcher object at 0x{id(self):x}>"


@dataclass
class FakeClip:
    """A CLIP: the text encoder file(s) it came from."""

    names: tuple[str, ...]
    paths: tuple[str, ...]
    clip_type: str | None = None  # DualCLIPLoader/CLIPLoader ``type``; None for checkpoints and TripleCLIPLoader
    device: str = "default"

    def encode(self, text: str) -> list[list[Any]]:
        """``clip.encode_from_tokens_scheduled(clip.tokenize(text))``: one ``[cond, {pooled...}]`` pair."""
        return [[FakeCond(text, self.names), {"pooled_output": FakePooled(text)}]]

    def __str__(self) -> str:
        return f"<comfy.sd.CLIP object at 0x{id(self):x}>"


@dataclass(frozen=True)
class FakeCond:
    """The cond tensor of one conditioning entry: the text it encodes."""

    text: str
    clip: tuple[str, ...]

    def __repr__(self) -> str:
        return f"tensor(<cond {self.text!r}>)"


@dataclass(frozen=True)
class FakePooled:
    text: str

    def __repr__(self) -> str:
        return "tensor(<pooled>)"


@dataclass
class FakeVae:
    """A VAE: its file, spatial compression and latent channels."""

    name: str
    path: str | None
    downscale: int = 8
    latent_channels: int = 4

    def __str__(self) -> str:
        return f"<comfy.sd.VAE object at 0x{id(self):x}>"


@dataclass
class FakeLatent:
    """The ``samples`` tensor of a LATENT: its shape plus where it came from."""

    batch: int
    channels: int
    height: int
    width: int
    pixels: tuple[tuple[int, int, int], ...] | None = None  # the colours VAEEncode encoded, per image
    sampled: dict[str, Any] | None = None  # what KSampler did (see :func:`ksampler`)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    def __str__(self) -> str:
        return f"tensor(<LATENT {self.batch}x{self.channels}x{self.height}x{self.width}>)"

    __repr__ = __str__


def sample_rgb(loras: list[tuple[int, float]], seed: int) -> tuple[int, int, int]:
    """The colour of a decoded sample: red = the LoRAs' trained steps (mod 256, 0 without LoRA), green =
    0 without LoRA else 100 x the summed strengths (clamped to 1..255), blue = seed mod 256 (VAEDecode passes
    the KSampler seed plus the image's batch index)."""
    if not loras:
        return (0, 0, seed % 256)
    red = sum(steps for steps, _strength in loras) % 256
    green = min(255, max(1, round(100 * sum(strength for _steps, strength in loras))))
    return (red, green, seed % 256)


# --- folder_paths / comfy.utils ----------------------------------------------------------------------------


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def full_path(paths: ComfyPaths, folder_name: str, filename: str) -> str | None:
    """``folder_paths.get_full_path``."""
    folder_name = LEGACY_FOLDERS.get(folder_name, folder_name)
    folders = paths.folder_paths().get(folder_name)
    if folders is None:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for x in folders:
        candidate = os.path.join(x, filename)
        if os.path.isfile(candidate):
            return candidate
    return None


def full_path_or_raise(paths: ComfyPaths, folder_name: str, filename: str) -> str:
    """``folder_paths.get_full_path_or_raise``."""
    found = full_path(paths, folder_name, filename)
    if found is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return found


def load_torch_file(path: str) -> None:
    """``comfy.utils.load_torch_file``'s failures for files that are no model at all."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    if path.lower().endswith((".safetensors", ".sft")):
        if len(data) < 8:
            raise SimulatedError("Error while deserializing header: header too small", SAFETENSORS_ERROR)
        size = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8 : 8 + size])
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise SimulatedError("Error while deserializing header: InvalidHeaderDeserialization", SAFETENSORS_ERROR)
    elif not data:
        raise EOFError("Ran out of input")  # torch.load of an empty file


def input_subfolders(paths: ComfyPaths) -> list[str]:
    """``folder_paths.get_input_subfolders`` (the combo of the folder dataset loaders).

    ``input/3d`` is created first: ``Load3D.INPUT_TYPES`` makes it on every ``/object_info`` of a real
    server, which is why the recorded list is ``["3d"]``."""
    input_dir = paths.input
    if not os.path.exists(input_dir):
        return []
    os.makedirs(os.path.join(input_dir, "3d"), exist_ok=True)
    folders = []
    for root, _dirs, _files in os.walk(input_dir):
        rel_path = os.path.relpath(root, input_dir)
        if rel_path != ".":
            folders.append(rel_path.replace(os.sep, "/"))
    return sorted(folders)


def existing_lora_choices(paths: ComfyPaths) -> list[str]:
    """``TrainLoraNode.existing_lora``: the loras (``models/loras`` and ``output/loras``) plus ``[None]``."""
    return paths.filename_list("loras") + ["[None]"]


def vae_list(paths: ComfyPaths) -> list[str]:
    """``VAELoader.vae_list``: the vae files, the TAESD pairs found in vae_approx, then ``pixel_space``."""
    vaes = paths.filename_list("vae")
    approx = paths.filename_list("vae_approx")
    found = {v.split(".")[0] for v in approx}
    for name in ("taesd", "taesdxl", "taesd3"):
        if f"{name}_decoder" in found and f"{name}_encoder" in found:
            vaes.append(name)
    if "taef1_encoder" in found and "taef1_decoder" in found:
        vaes.append("taef1")
    vaes.append("pixel_space")
    return vaes


# pseudo-folders of app.DYNAMIC_COMBOS -> the list they stand for
NATIVE_COMBO_SOURCES: dict[str, Callable[[ComfyPaths], list[str]]] = {
    "<input subfolders>": input_subfolders,
    "<loras + [None]>": existing_lora_choices,
    "<vae list>": vae_list,
}


# --- loaders ---------------------------------------------------------------------------------------------


async def checkpoint_loader_simple(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    name = str(args["ckpt_name"])
    path = full_path_or_raise(ctx.server.paths, "checkpoints", name)
    load_torch_file(path)
    await ctx.sleep(ctx.server.config["step_delay"])
    model = FakeModel("checkpoint", name, path)
    return NodeOutput((model, FakeClip((name,), (path,)), FakeVae(name, path)))


async def unet_loader(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    name = str(args["unet_name"])
    path = full_path_or_raise(ctx.server.paths, "diffusion_models", name)
    load_torch_file(path)
    await ctx.sleep(ctx.server.config["step_delay"])
    return NodeOutput((FakeModel("diffusion_model", name, path, weight_dtype=str(args["weight_dtype"])),))


async def _load_clip(ctx: NodeContext, names: list[str], clip_type: str | None, device: str) -> NodeOutput:
    clip_paths = [full_path_or_raise(ctx.server.paths, "text_encoders", n) for n in names]
    for p in clip_paths:
        load_torch_file(p)
    await ctx.sleep(ctx.server.config["step_delay"])
    return NodeOutput((FakeClip(tuple(names), tuple(clip_paths), clip_type, device),))


async def dual_clip_loader(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    names = [str(args["clip_name1"]), str(args["clip_name2"])]
    return await _load_clip(ctx, names, str(args["type"]), str(args.get("device", "default")))


async def triple_clip_loader(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    names = [str(args["clip_name1"]), str(args["clip_name2"]), str(args["clip_name3"])]
    return await _load_clip(ctx, names, None, "default")


async def vae_loader(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    name = str(args["vae_name"])
    paths = ctx.server.paths
    if name == "pixel_space":
        vae = FakeVae(name, None, downscale=1, latent_channels=3)
    elif name in ("taesd", "taesdxl", "taesd3", "taef1"):
        approx = paths.filename_list("vae_approx")
        for part in ("encoder", "decoder"):
            match = [a for a in approx if a.startswith(f"{name}_{part}.")]
            if not match:  # next(filter(...)) on nothing
                raise SimulatedError("", "StopIteration")
            load_torch_file(full_path_or_raise(paths, "vae_approx", match[0]))
        vae = FakeVae(name, None)
    else:
        path = full_path_or_raise(paths, "vae", name)
        load_torch_file(path)
        vae = FakeVae(name, path)
    await ctx.sleep(ctx.server.config["step_delay"])
    return NodeOutput((vae,))


# --- conditioning, latents, sampling -------------------------------------------------------------------


async def clip_text_encode(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    clip = args.get("clip")
    if clip is None:
        raise RuntimeError(CLIP_INVALID)
    return NodeOutput((clip.encode(str(args["text"])),))


def conditioning_set_values(conditioning: list[Any], values: dict[str, Any]) -> list[Any]:
    """``node_helpers.conditioning_set_values``."""
    out = []
    for t in conditioning:
        n = [t[0], t[1].copy()]
        n[1].update(values)
        out.append(n)
    return out


async def flux_guidance(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    return NodeOutput((conditioning_set_values(args["conditioning"], {"guidance": args["guidance"]}),))


async def model_sampling_sd3(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    model: FakeModel = args["model"].clone()
    model.object_patches["model_sampling"] = {
        "class": "ModelSamplingDiscreteFlow+CONST",
        "shift": args["shift"],
        "multiplier": 1000,
    }
    return NodeOutput((model,))


async def empty_latent_image(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    w, h, n = int(args["width"]), int(args["height"]), int(args.get("batch_size", 1))
    return NodeOutput(({"samples": FakeLatent(n, 4, h // 8, w // 8)},))


async def empty_sd3_latent_image(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    w, h, n = int(args["width"]), int(args["height"]), int(args.get("batch_size", 1))
    return NodeOutput(({"samples": FakeLatent(n, 16, h // 8, w // 8)},))


async def vae_encode(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    vae: FakeVae = args["vae"]
    pixels = list(args["pixels"])
    if not pixels:
        raise SimulatedError("index 0 is out of bounds for dimension 0 with size 0", "IndexError")
    first = pixels[0]
    r = vae.downscale
    latent = FakeLatent(
        len(pixels),
        vae.latent_channels,
        first.height // r,  # vae_encode_crop_pixels: cropped to a multiple of the compression
        first.width // r,
        pixels=tuple(tuple(p.rgb) for p in pixels),
    )
    await ctx.sleep(ctx.server.config["step_delay"])
    return NodeOutput(({"samples": latent},))


async def vae_decode(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    vae: FakeVae = args["vae"]
    latent: FakeLatent = args["samples"]["samples"]
    r = vae.downscale
    images = ImageBatch()
    for i in range(latent.batch):
        if latent.sampled is not None:
            loras = [(s, f) for s, f in latent.sampled["loras"]]
            rgb = sample_rgb(loras, int(latent.sampled["seed"]) + i)
        elif latent.pixels is not None and i < len(latent.pixels):
            rgb = latent.pixels[i]
        else:
            rgb = (0, 0, 0)
        images.append(FakeImage(latent.width * r, latent.height * r, rgb))
    await ctx.sleep(ctx.server.config["step_delay"])
    return NodeOutput((images,))


async def image_batch(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``ImageBatch.batch``: image2 is scaled (``common_upscale``, center crop) to image1's size, then appended."""
    image1, image2 = list(args["image1"]), list(args["image2"])
    if image1 and image2 and (image1[0].width, image1[0].height) != (image2[0].width, image2[0].height):
        image2 = [FakeImage(image1[0].width, image1[0].height, i.rgb) for i in image2]
    return NodeOutput((ImageBatch([*image1, *image2]),))


def _texts(conditioning: Any) -> list[str]:
    texts = []
    for entry in conditioning or []:
        if isinstance(entry, list) and entry and isinstance(entry[0], FakeCond):
            texts.append(entry[0].text)
        elif isinstance(entry, list):
            texts.extend(_texts(entry))
    return texts


async def ksampler(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``common_ksampler``: ``steps`` progress messages, then a latent saying how it was sampled
    (``sampled``: model, its LoRAs as ``[trained_steps, strength]``, seed, steps, cfg, sampler, scheduler,
    denoise, the positive/negative texts and guidance, the model_sampling patch)."""
    model: FakeModel = args["model"]
    latent = dict(args["latent_image"])
    samples: FakeLatent = latent["samples"]
    steps = int(args["steps"])
    denoise = float(args.get("denoise", 1.0))
    if denoise <= 0.0:  # set_steps: empty sigmas, CFGGuider.sample returns the latent as it is
        return NodeOutput((latent,))
    for i in range(steps):
        await ctx.sleep(ctx.server.config["step_delay"])
        await ctx.progress(i + 1, steps)  # callback(step, x0, x, total_steps) -> update_absolute(step + 1)
    positive = args["positive"]
    guidance = [e[1].get("guidance") for e in positive if isinstance(e, list) and len(e) > 1]
    latent["samples"] = dataclasses.replace(
        samples,
        pixels=None,
        sampled={
            "model": model.name,
            "loras": [[lora.trained_steps, strength] for lora, strength in model.loras],
            "model_sampling": model.object_patches.get("model_sampling"),
            "seed": int(args["seed"]),
            "steps": steps,
            "cfg": args["cfg"],
            "sampler_name": args["sampler_name"],
            "scheduler": args["scheduler"],
            "denoise": denoise,
            "positive": _texts(positive),
            "negative": _texts(args["negative"]),
            "guidance": guidance,
        },
    )
    return NodeOutput((latent,))


# --- nodes_train.py ----------------------------------------------------------------------------------------


def _pillow_open(path: str) -> PILImage.Image:
    """``node_helpers.pillow(Image.open, path)``."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    prev_value = None
    try:
        img = Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError):
        prev_value = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        img = Image.open(path)
    finally:
        if prev_value is not None:
            ImageFile.LOAD_TRUNCATED_IMAGES = prev_value
    return img


def load_and_process_images(
    image_files: list[str], input_dir: str, resize_method: Any = "None", w: int | None = None,
    h: int | None = None,
) -> ImageBatch:
    """``nodes_train.load_and_process_images`` (Pillow for real; each image becomes a solid :class:`FakeImage`
    of its size and mean colour)."""
    from PIL import Image

    if not image_files:
        raise ValueError("No valid images found in input")
    output = ImageBatch()
    for file in image_files:
        image_path = os.path.join(input_dir, file)
        img = _pillow_open(image_path)
        if img.mode == "I":
            img = img.point(lambda i: i * (1 / 255))
        img = img.convert("RGB")
        if w is None and h is None:
            w, h = img.size[0], img.size[1]
        if img.size[0] != w or img.size[1] != h:
            if resize_method == "Stretch":
                img = img.resize((w, h), Image.Resampling.LANCZOS)
            elif resize_method == "Crop":
                img = img.crop((0, 0, w, h))  # type: ignore[arg-type]
            elif resize_method == "Pad":
                img = img.resize((w, h), Image.Resampling.LANCZOS)
            elif resize_method == "None":
                raise ValueError(RESIZE_MISMATCH)
        mean = img.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        assert isinstance(mean, tuple)
        rgb = (int(mean[0]), int(mean[1]), int(mean[2]))
        if output and (img.size[0], img.size[1]) != (output[0].width, output[0].height):
            first = output[0]
            raise RuntimeError(  # torch.cat
                f"Sizes of tensors must match except in dimension 0. Expected size {first.height} but got "
                f"size {img.size[1]} for tensor number {len(output)} in the list."
            )
        output.append(FakeImage(img.size[0], img.size[1], rgb))
    return output


def _missing_positional(cls: str, name: str) -> TypeError:
    return TypeError(f"{cls}.load_images() missing 1 required positional argument: '{name}'")


async def load_image_set_from_folder(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``LoadImageSetFromFolderNode.load_images(folder, resize_method)``."""
    if "resize_method" not in args:  # optional in the schema, positional in the function
        raise _missing_positional("LoadImageSetFromFolderNode", "resize_method")
    sub_input_dir = os.path.join(ctx.server.paths.input, str(args["folder"]))
    image_files = [
        f for f in os.listdir(sub_input_dir) if any(f.lower().endswith(ext) for ext in FOLDER_IMAGE_EXTENSIONS)
    ]
    return NodeOutput((load_and_process_images(image_files, sub_input_dir, args["resize_method"]),))


async def load_image_text_set_from_folder(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``LoadImageTextSetFromFolderNode.load_images(folder, clip, resize_method, width=None, height=None)``."""
    clip = args.get("clip")
    if "resize_method" not in args:
        raise _missing_positional("LoadImageTextSetFromFolderNode", "resize_method")
    if clip is None:
        raise RuntimeError(CLIP_INVALID)
    sub_input_dir = os.path.join(ctx.server.paths.input, str(args["folder"]))
    image_files: list[str] = []
    for item in os.listdir(sub_input_dir):
        path = os.path.join(sub_input_dir, item)
        if any(item.lower().endswith(ext) for ext in FOLDER_IMAGE_EXTENSIONS):
            image_files.append(path)
        elif os.path.isdir(path):  # kohya-ss/sd-scripts folder structure
            repeat = 1
            if item.split("_")[0].isdigit():
                repeat = int(item.split("_")[0])
            image_files.extend(
                [
                    os.path.join(path, f)
                    for f in os.listdir(path)
                    if any(f.lower().endswith(ext) for ext in FOLDER_IMAGE_EXTENSIONS)
                ]
                * repeat
            )
    caption_file_path = [f.replace(os.path.splitext(f)[1], ".txt") for f in image_files]
    captions = []
    for caption_file in caption_file_path:
        caption_path = os.path.join(sub_input_dir, caption_file)
        if os.path.exists(caption_path):
            captions.append(_read_text(caption_path).strip())
        else:
            captions.append("")
    width = args.get("width")
    height = args.get("height")
    width = width if width != -1 else None
    height = height if height != -1 else None
    images = load_and_process_images(image_files, sub_input_dir, args["resize_method"], width, height)
    await ctx.sleep(ctx.server.config["step_delay"])
    conditions: list[Any] = []
    empty_cond = clip.encode("")
    for text in captions:
        if text == "":
            conditions.append(empty_cond)  # the 0.3.64 quirk: the empty cond (a list) is appended ...
        conditions.extend(clip.encode(text))  # ... and the encoded "" is added as well
    return NodeOutput((images, conditions))


def fake_losses(seed: int, count: int) -> list[float]:
    """The loss values of a fake training run: a noisy decreasing curve, deterministic from the seed."""
    rng = random.Random(seed)
    return [0.05 + 0.25 * math.exp(-3.0 * i / max(1, count)) + rng.uniform(0.0, 0.05) for i in range(count)]


async def train_lora(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``TrainLoraNode.train``.

    The LoRA's ``record``: ``trained_steps`` (steps + existing_steps, the node's 4th output), ``steps`` (this
    run), ``iterations`` (steps x grad_accumulation_steps), ``existing_lora`` (name or None),
    ``existing_steps`` (parsed from the name), ``existing_trained_steps`` (the ``trained_steps`` recorded in
    that file when it is one of ours, else None), ``seed``, ``rank`` and ``algorithm`` (those of the existing
    LoRA when it has them: upstream loads existing adapters as they are), ``learning_rate``, ``optimizer``,
    ``loss_function``, ``batch_size``, ``grad_accumulation_steps``, ``training_dtype``, ``lora_dtype``,
    ``gradient_checkpointing``, ``model`` (file name), ``images``, ``captions`` and ``prompt_id``.

    The ``training_log`` entry: ``kind`` "native", ``prompt_id``, ``node``, ``steps``, ``iterations`` (done),
    ``existing_lora`` (None for "[None]"), ``existing_steps``, ``total_steps``, ``seed``, ``saved_as`` (None:
    the trainer does not know), ``outcome`` (completed / interrupted / cancelled / error) and ``restarts``.
    """
    model: FakeModel = args["model"]
    mp = model.clone()
    latents: FakeLatent = args["latents"]["samples"]
    positive = list(args["positive"])
    num_images = latents.batch
    if len(positive) == 1 and num_images > 1:
        positive = positive * num_images
    elif len(positive) != num_images:
        raise ValueError(
            f"Number of positive conditions ({len(positive)}) does not match number of images ({num_images})."
        )
    steps = int(args["steps"])
    grad_acc = int(args["grad_accumulation_steps"])
    seed = int(args["seed"])
    existing_lora = str(args["existing_lora"])
    existing_steps = 0
    existing_record: dict[str, Any] | None = None
    if existing_lora != "[None]":
        lora_path = full_path_or_raise(ctx.server.paths, "loras", existing_lora)
        # Extract steps from filename like "trained_lora_10_steps_20250225_203716"
        existing_steps = int(existing_lora.split("_steps_")[0].split("_")[-1])
        load_torch_file(lora_path)
        existing_record = read_fake_record(lora_path)
    rank = args["rank"]
    algorithm = args["algorithm"]
    if existing_record is not None:
        rank = existing_record.get("rank", rank)
        algorithm = existing_record.get("algorithm", algorithm)
    existing_trained = None if existing_record is None else existing_record.get("trained_steps")
    total_steps = steps * grad_acc  # TrainSampler(total_steps=steps*grad_accumulation_steps)
    losses = fake_losses(seed, total_steps)
    loss_map: dict[str, list[float]] = {"loss": []}
    server = ctx.server
    done = 0
    outcome = "error"
    try:
        optimizer_steps = 0
        for i in range(total_steps):
            await ctx.sleep(server.config["step_delay"])
            loss_map["loss"].append(losses[i])
            done = i + 1
            if (i + 1) % grad_acc == 0:
                optimizer_steps += 1
                if server.config.get("native_progress"):  # later ComfyUI: ui_pbar.update(1)
                    await ctx.progress(min(optimizer_steps, total_steps), total_steps)
        outcome = "completed"
    except InterruptProcessing:
        outcome = "interrupted"
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        server.training_log.append(
            {
                "kind": "native",
                "prompt_id": ctx.prompt_id,
                "node": ctx.node_id,
                "steps": steps,
                "iterations": done,
                "existing_lora": None if existing_lora == "[None]" else existing_lora,
                "existing_steps": existing_steps,
                "total_steps": steps + existing_steps,
                "seed": seed,
                "saved_as": None,
                "outcome": outcome,
                "restarts": server.epoch,
            }
        )
    record = {
        "kind": "native_lora",
        "trained_steps": steps + existing_steps,
        "steps": steps,
        "iterations": total_steps,
        "existing_lora": None if existing_lora == "[None]" else existing_lora,
        "existing_steps": existing_steps,
        "existing_trained_steps": existing_trained,
        "seed": seed,
        "rank": rank,
        "algorithm": algorithm,
        "learning_rate": args["learning_rate"],
        "optimizer": args["optimizer"],
        "loss_function": args["loss_function"],
        "batch_size": args["batch_size"],
        "grad_accumulation_steps": grad_acc,
        "training_dtype": args["training_dtype"],
        "lora_dtype": args["lora_dtype"],
        "gradient_checkpointing": args["gradient_checkpointing"],
        "model": model.name,
        "images": num_images,
        "captions": _texts(positive),
        "prompt_id": ctx.prompt_id,
    }
    lora = FakeLora(record)
    return NodeOutput((mp.with_lora(lora, 1.0), lora, loss_map, steps + existing_steps))


async def save_lora(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``SaveLoRA.save(lora, prefix, steps=None)``: returns ``{}`` (no UI)."""
    lora = args["lora"]
    steps = args.get("steps")
    full_output_folder, filename, counter, _subfolder = save_path(str(args["prefix"]), ctx.server.paths.output)
    if steps is None:
        output_checkpoint = f"{filename}_{counter:05}_.safetensors"
    else:
        output_checkpoint = f"{filename}_{steps}_steps_{counter:05}_.safetensors"
    output_checkpoint = os.path.join(full_output_folder, output_checkpoint)
    record = lora.record if isinstance(lora, FakeLora) else {}
    _write(output_checkpoint, fake_safetensors({"fake_trainer": json.dumps(record)}))
    return NodeOutput(())


async def lora_model_loader(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``LoraModelLoader.load_lora_model``."""
    model: FakeModel = args["model"]
    strength = args["strength_model"]
    if strength == 0:
        return NodeOutput((model,))
    return NodeOutput((model.with_lora(args["lora"], float(strength)),))


async def loss_graph(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``LossGraphNode.plot_loss``."""
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    loss_values = args["loss"]["loss"]
    filename_prefix = str(args["filename_prefix"])
    prompt = args.get("prompt")
    extra_pnginfo = args.get("extra_pnginfo")
    width, height = 800, 480
    margin = 40
    img = Image.new("RGB", (width + margin, height + margin), "white")
    draw = ImageDraw.Draw(img)
    min_loss, max_loss = min(loss_values), max(loss_values)
    scaled_loss = [(v - min_loss) / (max_loss - min_loss) for v in loss_values]
    steps = len(loss_values)
    prev_point = (margin, height - int(scaled_loss[0] * height))
    for i, v in enumerate(scaled_loss[1:], start=1):
        x = margin + int(i / steps * width)
        y = height - int(v * height)
        draw.line([prev_point, (x, y)], fill="blue", width=2)
        prev_point = (x, y)
    draw.line([(margin, 0), (margin, height)], fill="black", width=2)
    draw.line([(margin, height), (width + margin, height)], fill="black", width=2)
    font: Any
    try:
        font = ImageFont.truetype("arial.ttf", 12)
    except OSError:
        font = ImageFont.load_default()
    draw.text((5, height // 2), "Loss", font=font, fill="black")
    draw.text((width // 2, height + 10), "Steps", font=font, fill="black")
    draw.text((margin - 30, 0), f"{max_loss:.2f}", font=font, fill="black")
    draw.text((margin - 30, height - 10), f"{min_loss:.2f}", font=font, fill="black")
    metadata = PngInfo()
    if prompt is not None:
        metadata.add_text("prompt", json.dumps(prompt))
    if extra_pnginfo is not None:
        for x in extra_pnginfo:
            metadata.add_text(x, json.dumps(extra_pnginfo[x]))
    date = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    os.makedirs(ctx.server.paths.temp, exist_ok=True)
    img.save(os.path.join(ctx.server.paths.temp, f"{filename_prefix}_{date}.png"), pnginfo=metadata)
    return NodeOutput(
        (), {"images": [{"filename": f"{filename_prefix}_{date}.png", "subfolder": "", "type": "temp"}]}
    )


NATIVE_NODES: dict[str, NodeFunc] = {
    "CheckpointLoaderSimple": checkpoint_loader_simple,
    "UNETLoader": unet_loader,
    "DualCLIPLoader": dual_clip_loader,
    "TripleCLIPLoader": triple_clip_loader,
    "VAELoader": vae_loader,
    "CLIPTextEncode": clip_text_encode,
    "FluxGuidance": flux_guidance,
    "ModelSamplingSD3": model_sampling_sd3,
    "EmptyLatentImage": empty_latent_image,
    "EmptySD3LatentImage": empty_sd3_latent_image,
    "VAEEncode": vae_encode,
    "VAEDecode": vae_decode,
    "ImageBatch": image_batch,
    "KSampler": ksampler,
    "LoadImageSetFromFolderNode": load_image_set_from_folder,
    "LoadImageTextSetFromFolderNode": load_image_text_set_from_folder,
    "TrainLoraNode": train_lora,
    "SaveLoRANode": save_lora,
    "LoraModelLoader": lora_model_loader,
    "LossGraphNode": loss_graph,
}
