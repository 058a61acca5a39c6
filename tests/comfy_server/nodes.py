"""Simulated nodes: the ``accept_nodes`` test pack and the core nodes the tests use."""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import TYPE_CHECKING, Any

from tests.comfy_server.executor import IsChangedFunc, NodeContext, NodeFunc, NodeOutput
from tests.comfy_server.paths import save_path
from tests.comfy_server.png import color_to_rgb, make_png

if TYPE_CHECKING:
    from tests.comfy_server.app import ServerState


class FakeImage:
    """One image of an IMAGE batch: a solid colour (enough for saving PNGs and counting)."""

    def __init__(self, width: int, height: int, rgb: tuple[int, int, int]) -> None:
        self.width, self.height, self.rgb = width, height, rgb

    def png(self, text: dict[str, str] | None = None) -> bytes:
        return make_png(self.width, self.height, self.rgb, text)

    def __repr__(self) -> str:
        return f"tensor(<image {self.width}x{self.height} rgb={self.rgb}>)"


class ImageBatch(list):  # type: ignore[type-arg]
    """An IMAGE value: a list of :class:`FakeImage` (str() looks like a tensor summary)."""

    def __str__(self) -> str:
        if not self:
            return "tensor([])"
        first = self[0]
        return f"tensor(<IMAGE batch {len(self)}x{first.height}x{first.width}x3>)"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# --- accept_nodes ---------------------------------------------------------------------------------


async def accept_slow_steps(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    steps = int(args["steps"])
    delay = float(args["delay"])
    text = args.get("text", "accept")
    for i in range(steps):
        ctx.check_interrupt()
        await ctx.sleep(delay)
        await ctx.progress(i + 1, steps)
    return NodeOutput((f"{text}: finished {steps} steps",))


async def accept_save_text(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    text = str(args["text"])
    prefix = args.get("filename_prefix", "accept")
    out_dir = ctx.server.paths.output
    folder, filename, counter, subfolder = save_path(prefix, out_dir)
    file = f"{filename}_{counter:05}_.txt"
    _write(os.path.join(folder, file), text.encode("utf-8"))
    return NodeOutput(
        (), {"text": [text], "files": [{"filename": file, "subfolder": subfolder, "type": "output"}]}
    )


async def accept_fail(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    raise RuntimeError(args.get("message", "boom"))


# --- core nodes -----------------------------------------------------------------------------------


async def empty_image(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    w, h = int(args["width"]), int(args["height"])
    rgb = color_to_rgb(int(args.get("color", 0)))
    return NodeOutput((ImageBatch(FakeImage(w, h, rgb) for _ in range(int(args.get("batch_size", 1)))),))


def save_images(
    ctx: NodeContext, images: Any, prefix: str, out_dir: str, kind: str, args: dict[str, Any]
) -> list[dict[str, Any]]:
    batch = list(images or [])
    width = batch[0].width if batch else 0
    height = batch[0].height if batch else 0
    folder, filename, counter, subfolder = save_path(prefix, out_dir, width, height)
    text: dict[str, str] = {}
    if args.get("prompt") is not None:
        text["prompt"] = json.dumps(args["prompt"])
    extra = args.get("extra_pnginfo")
    if isinstance(extra, dict):
        for key, value in extra.items():
            text[key] = json.dumps(value)
    results = []
    for batch_number, image in enumerate(batch):
        name = filename.replace("%batch_num%", str(batch_number))
        file = f"{name}_{counter:05}_.png"
        data = image.png(text) if isinstance(image, FakeImage) else make_png(8, 8, (0, 0, 0), text)
        _write(os.path.join(folder, file), data)
        results.append({"filename": file, "subfolder": subfolder, "type": kind})
        counter += 1
    return results


async def save_image(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    prefix = args.get("filename_prefix", "ComfyUI")
    return NodeOutput(
        (), {"images": save_images(ctx, args["images"], prefix, ctx.server.paths.output, "output", args)}
    )


async def preview_image(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    prefix = "ComfyUI_temp_" + suffix
    return NodeOutput(
        (), {"images": save_images(ctx, args["images"], prefix, ctx.server.paths.temp, "temp", args)}
    )


async def preview_any(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    """``comfy_extras/nodes_preview_any.PreviewAny``."""
    source = args.get("source")
    value = "None"
    if isinstance(source, str):
        value = source
    elif isinstance(source, (int, float, bool)):
        value = str(source)
    elif source is not None:
        try:
            value = json.dumps(source)
        except (TypeError, ValueError):
            value = str(source)
    return NodeOutput((), {"text": [value]})


async def passthrough(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    return NodeOutput((args.get("value"),))


async def string_concatenate(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    return NodeOutput(
        (str(args.get("string_a", "")) + str(args.get("delimiter", "")) + str(args.get("string_b", "")),)
    )


async def string_replace(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    return NodeOutput(
        (str(args.get("string", "")).replace(str(args.get("find", "")), str(args.get("replace", ""))),)
    )


async def load_image(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    name, base = ctx.server.paths.annotated_filepath(str(args["image"]))
    path = os.path.join(base or ctx.server.paths.input, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    return NodeOutput((ImageBatch([FakeImage(8, 8, (0, 0, 0))]), "tensor(<MASK>)"))


async def image_invert(ctx: NodeContext, args: dict[str, Any]) -> NodeOutput:
    inverted = ImageBatch(
        FakeImage(i.width, i.height, tuple(255 - c for c in i.rgb))  # type: ignore[arg-type]
        for i in args["image"]
    )
    return NodeOutput((inverted,))


CORE_NODES: dict[str, NodeFunc] = {
    "AcceptSlowSteps": accept_slow_steps,
    "AcceptSaveText": accept_save_text,
    "AcceptFail": accept_fail,
    "EmptyImage": empty_image,
    "SaveImage": save_image,
    "PreviewImage": preview_image,
    "PreviewAny": preview_any,
    "PrimitiveString": passthrough,
    "PrimitiveStringMultiline": passthrough,
    "PrimitiveInt": passthrough,
    "PrimitiveFloat": passthrough,
    "PrimitiveBoolean": passthrough,
    "StringConcatenate": string_concatenate,
    "StringReplace": string_replace,
    "LoadImage": load_image,
    "ImageInvert": image_invert,
}


def load_image_is_changed(server: ServerState, inputs: dict[str, Any]) -> str:
    """``LoadImage.IS_CHANGED``: the sha256 of the file (a missing file raises, which means NaN)."""
    name, base = server.paths.annotated_filepath(str(inputs["image"]))
    with open(os.path.join(base or server.paths.input, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# The core classes with an ``IS_CHANGED`` (the others are cached by their inputs alone).
CORE_IS_CHANGED: dict[str, IsChangedFunc] = {
    "LoadImage": load_image_is_changed,
}
