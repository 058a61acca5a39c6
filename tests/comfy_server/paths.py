"""ComfyUI's folder layout (``folder_paths.py``) under the fake server's root directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.comfy_server.png import make_png

SUPPORTED_PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

# Model folder name -> (sub-directories of the root, accepted extensions); order as recorded.
_FOLDERS: tuple[tuple[str, tuple[str, ...], frozenset[str]], ...] = (
    ("checkpoints", ("models/checkpoints", "output/checkpoints"), SUPPORTED_PT_EXTENSIONS),
    ("configs", ("models/configs",), frozenset({".yaml"})),
    ("loras", ("models/loras", "output/loras"), SUPPORTED_PT_EXTENSIONS),
    ("vae", ("models/vae", "output/vae"), SUPPORTED_PT_EXTENSIONS),
    ("text_encoders", ("models/text_encoders", "models/clip", "output/clip"), SUPPORTED_PT_EXTENSIONS),
    (
        "diffusion_models",
        ("models/unet", "models/diffusion_models", "output/diffusion_models"),
        SUPPORTED_PT_EXTENSIONS,
    ),
    ("clip_vision", ("models/clip_vision",), SUPPORTED_PT_EXTENSIONS),
    ("style_models", ("models/style_models",), SUPPORTED_PT_EXTENSIONS),
    ("embeddings", ("models/embeddings",), SUPPORTED_PT_EXTENSIONS),
    ("diffusers", ("models/diffusers",), frozenset({"folder"})),
    ("vae_approx", ("models/vae_approx",), SUPPORTED_PT_EXTENSIONS),
    ("controlnet", ("models/controlnet", "models/t2i_adapter"), SUPPORTED_PT_EXTENSIONS),
    ("gligen", ("models/gligen",), SUPPORTED_PT_EXTENSIONS),
    ("upscale_models", ("models/upscale_models",), SUPPORTED_PT_EXTENSIONS),
    ("custom_nodes", ("custom_nodes",), frozenset()),
    ("hypernetworks", ("models/hypernetworks",), SUPPORTED_PT_EXTENSIONS),
    ("photomaker", ("models/photomaker",), SUPPORTED_PT_EXTENSIONS),
    ("classifiers", ("models/classifiers",), frozenset({""})),
    ("model_patches", ("models/model_patches",), SUPPORTED_PT_EXTENSIONS),
    ("audio_encoders", ("models/audio_encoders",), SUPPORTED_PT_EXTENSIONS),
)
LEGACY_ALIASES = {"unet": "diffusion_models", "clip": "text_encoders"}

# The recorded server's 0-byte placeholders (object_info/README.md).
PLACEHOLDER_MODELS = (
    "models/unet/flux1-dev.safetensors",
    "models/vae/ae.safetensors",
    "models/clip/clip_l.safetensors",
    "models/clip/t5xxl_fp16.safetensors",
    # not recorded: the base models of the bundled SDXL and SD 3.5 templates (workflows/*_headless.json)
    "models/checkpoints/sd_xl_base_1.0.safetensors",
    "models/checkpoints/sd3.5_large.safetensors",
    "models/clip/clip_g.safetensors",
)
# A minimal well-formed safetensors file: 8-byte little-endian header length, then "{}" padded.
FAKE_SAFETENSORS = (8).to_bytes(8, "little") + b"{}      "
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


class ComfyPaths:
    """The ComfyUI folder: ``output/``, ``input/``, ``temp/`` and ``models/...`` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.output = str(self.root / "output")
        self.input = str(self.root / "input")
        self.temp = str(self.root / "temp")

    def create(self, placeholders: str = "fake") -> None:
        """Make the folder tree; ``placeholders`` is ``fake`` (tiny valid files), ``empty`` (0 bytes,
        as recorded: they fail at run time) or ``none``."""
        for d in (self.output, self.input, self.temp):
            os.makedirs(d, exist_ok=True)
        for _name, subdirs, _ext in _FOLDERS:
            for sub in subdirs:
                if sub.startswith("models/"):
                    os.makedirs(self.root / sub, exist_ok=True)
        marker = Path(self.output) / "_output_images_will_be_put_here"
        if not marker.exists():
            marker.write_bytes(b"")
        example = Path(self.input) / "example.png"
        if not example.exists():
            example.write_bytes(make_png(1, 1, (0, 0, 0)))
        if placeholders != "none":
            for rel in PLACEHOLDER_MODELS:
                p = self.root / rel
                if not p.exists():
                    p.write_bytes(b"" if placeholders == "empty" else FAKE_SAFETENSORS)

    def directory_by_type(self, kind: str | None) -> str | None:
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind or "")

    def annotated_filepath(self, name: str) -> tuple[str, str | None]:
        for suffix, base in (("[output]", self.output), ("[input]", self.input), ("[temp]", self.temp)):
            if name.endswith(suffix):
                return name[: -len(suffix) - 1], base
        return name, None

    # --- model folders ---------------------------------------------------------------------------

    def folder_names(self) -> list[str]:
        return [name for name, _dirs, _ext in _FOLDERS]

    def folder_paths(self) -> dict[str, list[str]]:
        return {name: [str(self.root / d) for d in dirs] for name, dirs, _ext in _FOLDERS}

    def has_folder(self, name: str) -> bool:
        return any(name == n for n, _d, _e in _FOLDERS)

    def filename_list(self, folder: str) -> list[str]:
        folder = LEGACY_ALIASES.get(folder, folder)
        for name, dirs, exts in _FOLDERS:
            if name != folder:
                continue
            found: set[str] = set()
            for d in dirs:
                base = self.root / d
                if not base.is_dir():
                    continue
                for dirpath, _subdirs, files in os.walk(base, followlinks=True):
                    for f in files:
                        rel = os.path.relpath(os.path.join(dirpath, f), base)
                        if not exts or os.path.splitext(f)[1].lower() in exts:
                            found.add(rel)
            return sorted(found)
        return []

    def model_path(self, folder: str, name: str) -> str | None:
        folder = LEGACY_ALIASES.get(folder, folder)
        for fname, dirs, _e in _FOLDERS:
            if fname == folder:
                for d in dirs:
                    p = self.root / d / name
                    if p.is_file():
                        return str(p)
        return None

    def input_images(self) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.input) if e.is_file()]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)

    def resolve_server_path(self, path: str) -> str:
        """A server-side path as a node sees it: relative paths are relative to the ComfyUI folder."""
        return path if os.path.isabs(path) else str(self.root / path)


def save_path(
    filename_prefix: str, output_dir: str, width: int = 0, height: int = 0
) -> tuple[str, str, int, str]:
    """Port of ``folder_paths.get_save_image_path``: (full folder, base name, counter, subfolder)."""

    def map_filename(filename: str) -> tuple[int, str]:
        prefix_len = len(os.path.basename(filename_prefix))
        prefix = filename[: prefix_len + 1]
        try:
            digits = int(filename[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    if "%" in filename_prefix:
        now = time.localtime()
        for key, value in (
            ("%width%", str(width)),
            ("%height%", str(height)),
            ("%year%", str(now.tm_year)),
            ("%month%", str(now.tm_mon).zfill(2)),
            ("%day%", str(now.tm_mday).zfill(2)),
            ("%hour%", str(now.tm_hour).zfill(2)),
            ("%minute%", str(now.tm_min).zfill(2)),
            ("%second%", str(now.tm_sec).zfill(2)),
        ):
            filename_prefix = filename_prefix.replace(key, value)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception(  # noqa: TRY002 - the upstream type
            "**** ERROR: Saving image outside the output folder is not allowed."
            + "\n full_output_folder: "
            + os.path.abspath(full_output_folder)
            + "\n         output_dir: "
            + output_dir
            + "\n         commonpath: "
            + os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
        )
    try:
        counter = (
            max(
                filter(
                    lambda a: os.path.normcase(a[1][:-1]) == os.path.normcase(filename) and a[1][-1] == "_",
                    map(map_filename, os.listdir(full_output_folder)),
                )
            )[0]
            + 1
        )
    except ValueError:
        counter = 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder
