"""The fake ComfyUI server's native training nodes (tests/comfy_server/native_nodes.py) over real HTTP + websocket.

Each test starts a real fake-server process, writes a dataset into its ``input/`` folder and posts API-format
prompts of a native training + validation graph, then checks files, history, websocket frames and
``training_log`` against what ComfyUI 0.3.64's ``comfy_extras/nodes_train.py`` does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from tests.comfy_server.flux_nodes import read_fake_record
from tests.comfy_server.native_nodes import sample_rgb
from tests.comfy_server.paths import FAKE_SAFETENSORS
from tests.comfy_server.plugin import ComfyServer

CKPT = "sd15_fake.safetensors"
PREFIX = "loras/native_test"
VAL_SEED = 7


# --- helpers ------------------------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def make_dataset(
    server: ComfyServer, folder: str, images: Mapping[str, str | None], size: tuple[int, int] = (32, 32)
) -> Path:
    """``input/<folder>/<name>`` images, each with ``<stem>.txt`` holding its caption (None: no caption file)."""
    base = server.root / "input" / folder
    for i, (name, caption) in enumerate(images.items()):
        write_image(base / name, size, (40 * i % 256, 90, 200))
        if caption is not None:
            (base / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return base


def make_model(server: ComfyServer, rel: str = f"models/checkpoints/{CKPT}", data: bytes = FAKE_SAFETENSORS) -> None:
    path = server.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def native_graph(
    folder: str,
    *,
    steps: int = 4,
    seed: int = 1,
    existing_lora: str = "[None]",
    grad_acc: int = 1,
    resize_method: str = "None",
) -> dict[str, Any]:
    """Checkpoint -> dataset -> VAEEncode -> TrainLoraNode -> SaveLoRANode + LossGraphNode + LoraModelLoader
    -> KSampler validation -> VAEDecode -> SaveImage; node 14 shows TrainLoraNode's ``steps`` output."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {
            "class_type": "LoadImageTextSetFromFolderNode",
            "inputs": {"folder": folder, "clip": ["1", 1], "resize_method": resize_method, "width": -1, "height": -1},
        },
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {
            "class_type": "TrainLoraNode",
            "inputs": {
                "model": ["1", 0],
                "latents": ["3", 0],
                "positive": ["2", 1],
                "batch_size": 1,
                "grad_accumulation_steps": grad_acc,
                "steps": steps,
                "learning_rate": 0.0005,
                "rank": 8,
                "optimizer": "AdamW",
                "loss_function": "MSE",
                "seed": seed,
                "training_dtype": "bf16",
                "lora_dtype": "bf16",
                "algorithm": "LoRA",
                "gradient_checkpointing": True,
                "existing_lora": existing_lora,
            },
        },
        "5": {"class_type": "SaveLoRANode", "inputs": {"lora": ["4", 1], "prefix": PREFIX, "steps": ["4", 3]}},
        "6": {"class_type": "LossGraphNode", "inputs": {"loss": ["4", 2], "filename_prefix": "loss_graph"}},
        "7": {"class_type": "LoraModelLoader", "inputs": {"model": ["1", 0], "lora": ["4", 1], "strength_model": 1.0}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks", "clip": ["1", 1]}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "11": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["7", 0],
                "seed": VAL_SEED,
                "steps": 3,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["8", 0],
                "negative": ["9", 0],
                "latent_image": ["10", 0],
                "denoise": 1.0,
            },
        },
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "native_val"}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["4", 3]}},
    }


class Run:
    """One prompt run: the POST answer, the websocket frames until it finished, its history entry."""

    def __init__(self, answer: dict[str, Any], frames: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        self.answer, self.frames, self.entry = answer, frames, entry
        self.prompt_id: str = answer["prompt_id"]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f["data"] for f in self.frames if f["type"] == kind]

    def progress(self, node: str) -> list[tuple[float, float]]:
        return [(d["value"], d["max"]) for d in self.of_type("progress") if d["node"] == node]

    @property
    def status(self) -> str:
        return str(self.entry["status"]["status_str"])

    def message(self, kind: str) -> dict[str, Any]:
        found = [data for event, data in self.entry["status"]["messages"] if event == kind]
        assert len(found) == 1, self.entry["status"]
        return dict(found[0])


async def recv_json(ws: Any, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(raw, str):
            frame: dict[str, Any] = json.loads(raw)
            return frame


async def run_prompt(
    server: ComfyServer, graph: dict[str, Any], *, during: Any = None, timeout: float = 60.0
) -> Run:
    """POST ``graph`` with a websocket open; ``during(client, frame)`` is awaited for every frame."""
    cid = str(uuid.uuid4())
    async with websockets.connect(f"{server.ws_url}/ws?clientId={cid}", max_size=None) as ws:
        assert (await recv_json(ws))["type"] == "status"
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            r = await client.post("/prompt", json={"prompt": graph, "client_id": cid})
            assert r.status_code == 200, r.text
            answer = r.json()
            frames = []
            while True:
                frame = await recv_json(ws, timeout)
                frames.append(frame)
                if during is not None:
                    await during(client, frame)
                data = frame["data"]
                if frame["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == answer[
                    "prompt_id"
                ]:
                    break
            entry = (await client.get(f"/history/{answer['prompt_id']}")).json()[answer["prompt_id"]]
    return Run(answer, frames, entry)


def lora_dir(server: ComfyServer) -> Path:
    return server.root / "output" / "loras"


def lora_files(server: ComfyServer) -> list[str]:
    folder = lora_dir(server)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def native_log(server: ComfyServer) -> list[dict[str, Any]]:
    return [e for e in server.state()["training_log"] if e.get("kind") == "native"]


def pixel(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as img:
        value = img.convert("RGB").getpixel((0, 0))
    assert isinstance(value, tuple)
    return (int(value[0]), int(value[1]), int(value[2]))


CAPTIONED = {"a.png": "a red thing", "b.png": "a green thing", "c.png": "a blue thing"}


# --- object_info -------------------------------------------------------------------------------------------


async def test_dynamic_combo_lists_follow_the_folders(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(models="none")  # only the files written here
    root = server.root
    make_model(server)
    make_model(server, "models/unet/unet_a.safetensors")
    make_model(server, "models/diffusion_models/unet_b.safetensors")
    make_model(server, "models/vae/ae.safetensors")
    make_model(server, "models/vae/sdxl_vae.safetensors")
    make_model(server, "models/vae_approx/taesd_encoder.pth", b"x")
    make_model(server, "models/vae_approx/taesd_decoder.pth", b"x")
    make_model(server, "models/vae_approx/taesdxl_decoder.pth", b"x")  # no encoder: not offered
    make_model(server, "models/loras/style_3_steps_00001_.safetensors")
    make_model(server, "output/loras/mine_5_steps_00001_.safetensors")  # 0.3.64 adds output/loras
    for name in ("clip_l", "clip_g", "t5xxl_fp16"):
        make_model(server, f"models/text_encoders/{name}.safetensors")
    (root / "input" / "ds" / "2_faces").mkdir(parents=True)
    (root / "input" / "other").mkdir()
    async with httpx.AsyncClient(base_url=server.url) as client:
        info = (await client.get("/object_info")).json()
        single = (await client.get("/object_info/TrainLoraNode")).json()

    def req(cls: str, name: str) -> Any:
        return info[cls]["input"]["required"][name]

    encoders = ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
    assert req("CheckpointLoaderSimple", "ckpt_name")[0] == [CKPT]
    assert req("UNETLoader", "unet_name")[0] == ["unet_a.safetensors", "unet_b.safetensors"]
    assert req("DualCLIPLoader", "clip_name1")[0] == encoders
    assert req("DualCLIPLoader", "clip_name2")[0] == encoders
    for name in ("clip_name1", "clip_name2", "clip_name3"):  # the V3 "COMBO" form keeps its shape
        assert req("TripleCLIPLoader", name) == ["COMBO", {"multiselect": False, "options": encoders}]
    assert req("VAELoader", "vae_name")[0] == ["ae.safetensors", "sdxl_vae.safetensors", "taesd", "pixel_space"]
    loras = ["mine_5_steps_00001_.safetensors", "style_3_steps_00001_.safetensors", "[None]"]
    assert req("TrainLoraNode", "existing_lora")[0] == loras
    assert single["TrainLoraNode"]["input"]["required"]["existing_lora"][0] == loras
    # all input sub-folders, recursive and sorted; "3d" is made by Load3D's INPUT_TYPES on a real server
    assert req("LoadImageTextSetFromFolderNode", "folder")[0] == ["3d", "ds", "ds/2_faces", "other"]
    # the other options stay as recorded
    assert req("TrainLoraNode", "existing_lora")[1]["default"] == "[None]"
    # the lists are live: a new folder and a new LoRA show up in the next answer
    (root / "input" / "zzz").mkdir()
    make_model(server, "output/loras/new_1_steps_00001_.safetensors")
    async with httpx.AsyncClient(base_url=server.url) as client:
        info = (await client.get("/object_info")).json()
    assert req("LoadImageTextSetFromFolderNode", "folder")[0][-1] == "zzz"
    assert "new_1_steps_00001_.safetensors" in req("TrainLoraNode", "existing_lora")[0]


async def test_recorded_files_give_the_recorded_object_info(comfy_server_factory: Any) -> None:
    from lorawf.comfy.schema import bundled_object_info

    server = comfy_server_factory(models="none")
    for rel in ("models/unet/flux1-dev.safetensors", "models/vae/ae.safetensors",
                "models/clip/clip_l.safetensors", "models/clip/t5xxl_fp16.safetensors"):
        make_model(server, rel)  # the recorded server's model files
    bundled = bundled_object_info()
    async with httpx.AsyncClient(base_url=server.url) as client:
        info = (await client.get("/object_info")).json()
    for cls in ("LoadImageTextSetFromFolderNode", "TrainLoraNode", "VAELoader", "DualCLIPLoader", "TripleCLIPLoader",
                "UNETLoader", "CheckpointLoaderSimple"):
        assert info[cls] == bundled[cls], cls


# --- a training run and its continuation ----------------------------------------------------------------------


async def test_two_segments_names_steps_history_and_validation_images(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "lorawf/ds1", CAPTIONED)
    first = await run_prompt(comfy_server, native_graph("lorawf/ds1", steps=4, seed=1))
    assert first.status == "success", first.entry["status"]
    assert lora_files(comfy_server) == ["native_test_4_steps_00001_.safetensors"]
    record = read_fake_record(str(lora_dir(comfy_server) / "native_test_4_steps_00001_.safetensors"))
    assert record is not None
    assert {k: record[k] for k in ("trained_steps", "steps", "existing_lora", "seed", "rank", "images")} == {
        "trained_steps": 4, "steps": 4, "existing_lora": None, "seed": 1, "rank": 8, "images": 3,
    }
    assert sorted(record["captions"]) == sorted(CAPTIONED.values())
    assert (record["learning_rate"], record["optimizer"], record["algorithm"], record["lora_dtype"]) == (
        0.0005, "AdamW", "LoRA", "bf16",
    )
    outputs = first.entry["outputs"]
    assert "5" not in outputs  # SaveLoRANode returns {}: nothing in history, no executed message
    assert not [d for d in first.of_type("executed") if d["node"] == "5"]
    assert outputs["14"] == {"text": ["4"]}
    (graph_image,) = outputs["6"]["images"]
    assert graph_image["type"] == "temp" and graph_image["subfolder"] == ""
    assert graph_image["filename"].startswith("loss_graph_") and graph_image["filename"].endswith(".png")
    assert outputs["13"]["images"] == [{"filename": "native_val_00001_.png", "subfolder": "", "type": "output"}]
    first_val = comfy_server.root / "output" / "native_val_00001_.png"
    assert pixel(first_val) == sample_rgb([(4, 1.0)], VAL_SEED)
    with Image.open(first_val) as img:
        assert img.size == (64, 48)
    async with httpx.AsyncClient(base_url=comfy_server.url) as client:
        r = await client.get("/view", params={"filename": graph_image["filename"], "type": "temp", "subfolder": ""})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        listed = (await client.get("/object_info/TrainLoraNode")).json()
    graph_png = comfy_server.root / "temp" / graph_image["filename"]
    assert graph_png.read_bytes() == r.content
    with Image.open(graph_png) as img:
        assert img.size == (840, 520)
        assert json.loads(img.info["prompt"])["4"]["class_type"] == "TrainLoraNode"
    existing = listed["TrainLoraNode"]["input"]["required"]["existing_lora"][0]
    assert existing == ["native_test_4_steps_00001_.safetensors", "[None]"]

    second = await run_prompt(comfy_server, native_graph("lorawf/ds1", steps=3, seed=2, existing_lora=existing[0]))
    assert second.status == "success", second.entry["status"]
    # get_save_image_path reads "4" (the steps) as the counter of the first file: the next counter is 5
    assert lora_files(comfy_server) == [
        "native_test_4_steps_00001_.safetensors",
        "native_test_7_steps_00005_.safetensors",
    ]
    assert second.entry["outputs"]["14"] == {"text": ["7"]}
    record2 = read_fake_record(str(lora_dir(comfy_server) / "native_test_7_steps_00005_.safetensors"))
    assert record2 is not None
    assert (record2["trained_steps"], record2["steps"], record2["existing_lora"], record2["existing_steps"]) == (
        7, 3, "native_test_4_steps_00001_.safetensors", 4,
    )
    assert record2["existing_trained_steps"] == 4 and record2["seed"] == 2
    assert second.entry["outputs"]["13"]["images"][0]["filename"] == "native_val_00002_.png"
    second_val = comfy_server.root / "output" / "native_val_00002_.png"
    assert pixel(second_val) == sample_rgb([(7, 1.0)], VAL_SEED) != pixel(first_val)
    # the loaders and encoders had the same inputs: served from the cache; training ran again
    (cached,) = second.of_type("execution_cached")
    assert {"1", "2", "3", "8", "9", "10"} <= set(cached["nodes"])
    assert not {"4", "5", "6", "7", "11", "12", "13"} & set(cached["nodes"])
    log = native_log(comfy_server)
    assert [(e["steps"], e["existing_lora"], e["existing_steps"], e["total_steps"], e["seed"]) for e in log] == [
        (4, None, 0, 4, 1),
        (3, "native_test_4_steps_00001_.safetensors", 4, 7, 2),
    ]
    assert all(e["saved_as"] is None and e["outcome"] == "completed" for e in log)
    assert [e["prompt_id"] for e in log] == [first.prompt_id, second.prompt_id]
    assert all(e["node"] == "4" for e in log)


async def test_identical_prompt_is_cached_and_a_new_seed_trains_again(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", CAPTIONED)
    graph = native_graph("ds", steps=2, seed=5)
    assert (await run_prompt(comfy_server, graph)).status == "success"
    again = await run_prompt(comfy_server, copy.deepcopy(graph))
    assert again.status == "success"
    (cached,) = again.of_type("execution_cached")
    assert sorted(cached["nodes"], key=int) == [str(i) for i in range(1, 15)]
    assert not again.of_type("executing")[:-1]  # only the final executing {node: null}
    assert len(native_log(comfy_server)) == 1
    assert lora_files(comfy_server) == ["native_test_2_steps_00001_.safetensors"]
    assert again.entry["outputs"]["6"]["images"]  # the cached UI is still in history
    graph["4"]["inputs"]["seed"] = 6
    reseeded = await run_prompt(comfy_server, graph)
    assert reseeded.status == "success"
    assert [e["seed"] for e in native_log(comfy_server)] == [5, 6]
    assert lora_files(comfy_server) == [
        "native_test_2_steps_00001_.safetensors",
        "native_test_2_steps_00003_.safetensors",
    ]


# --- dataset loading ------------------------------------------------------------------------------------------


async def test_uncaptioned_image_breaks_the_conditioning_count(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", {"a.png": "a thing", "b.png": None, "c.jpg": "another"})
    run = await run_prompt(comfy_server, native_graph("ds"))
    assert run.status == "error"
    error = run.message("execution_error")
    assert (error["node_id"], error["node_type"], error["exception_type"]) == ("4", "TrainLoraNode", "ValueError")
    # the empty caption is counted twice (the empty cond appended, the encoded "" added): 4 conds, 3 images
    assert error["exception_message"] == "Number of positive conditions (4) does not match number of images (3).\n"
    assert native_log(comfy_server) == [] and lora_files(comfy_server) == []
    assert set(error["executed"]) >= {"1", "2", "3"}


async def test_empty_caption_file_counts_twice_too(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", {"a.png": "   \n", "b.png": "caption"})
    run = await run_prompt(comfy_server, native_graph("ds"))
    assert run.status == "error"
    assert run.message("execution_error")["exception_message"] == (
        "Number of positive conditions (3) does not match number of images (2).\n"
    )


async def test_kohya_repeat_folders_and_a_single_caption_for_all(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    base = make_dataset(comfy_server, "kohya", {"3_sks/one.png": "sks one"})
    (base / "notes.txt").write_text("not an image", encoding="utf-8")
    run = await run_prompt(comfy_server, native_graph("kohya", steps=2))
    assert run.status == "success", run.entry["status"]
    record = read_fake_record(str(lora_dir(comfy_server) / "native_test_2_steps_00001_.safetensors"))
    assert record is not None
    # "3_sks" repeats its image 3 times; the 3 identical captions make 3 conds
    assert record["images"] == 3 and record["captions"] == ["sks one"] * 3


async def test_size_mismatch_without_resize_fails_and_stretch_resizes(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    base = make_dataset(comfy_server, "mixed", {"a.png": "one"}, size=(32, 32))
    write_image(base / "b.png", (48, 40), (10, 20, 30))
    (base / "b.txt").write_text("two", encoding="utf-8")
    run = await run_prompt(comfy_server, native_graph("mixed"))
    assert run.status == "error"
    error = run.message("execution_error")
    assert (error["node_id"], error["exception_type"]) == ("2", "ValueError")
    assert error["exception_message"] == (
        "Your input image size does not match the first image in the dataset. Either select a valid resize "
        "method or use the same size for all images.\n"
    )
    graph = native_graph("mixed", resize_method="Stretch")
    graph["15"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "dataset"}}
    stretched = await run_prompt(comfy_server, graph)
    assert stretched.status == "success", stretched.entry["status"]
    sizes = set()
    for image in stretched.entry["outputs"]["15"]["images"]:
        with Image.open(comfy_server.root / "output" / image["filename"]) as img:
            sizes.add(img.size)
    assert len(stretched.entry["outputs"]["15"]["images"]) == 2
    assert len(sizes) == 1 and sizes <= {(32, 32), (48, 40)}  # every image resized to the first one's size


async def test_folder_without_images_fails(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    (comfy_server.root / "input" / "empty").mkdir(parents=True)
    (comfy_server.root / "input" / "empty" / "a.txt").write_text("caption only", encoding="utf-8")
    run = await run_prompt(comfy_server, native_graph("empty"))
    error = run.message("execution_error")
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "2", "ValueError", "No valid images found in input\n",
    )


# --- progress and interrupts -------------------------------------------------------------------------------------


async def test_training_sends_no_progress_by_default(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", CAPTIONED)
    run = await run_prompt(comfy_server, native_graph("ds", steps=5))
    assert run.status == "success"
    assert run.progress("4") == []  # 0.3.64 only prints tqdm on the console
    assert run.progress("11") == [(1, 3), (2, 3), (3, 3)]  # the sampler callback: value 1..steps, max steps
    assert {d["node"] for d in run.of_type("progress")} == {"11"}


async def test_native_progress_option_reports_optimizer_steps(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(native_progress=True)
    make_model(server)
    make_dataset(server, "ds", CAPTIONED)
    run = await run_prompt(server, native_graph("ds", steps=4))
    assert run.status == "success"
    assert run.progress("4") == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # later ComfyUI: ProgressBar(steps * grad_accumulation_steps), update(1) after each optimizer step
    accumulated = await run_prompt(server, native_graph("ds", steps=3, seed=9, grad_acc=2))
    assert accumulated.status == "success"
    assert accumulated.progress("4") == [(1, 6), (2, 6), (3, 6)]
    assert native_log(server)[-1]["iterations"] == 6
    assert server.state()["config"]["native_progress"] is True
    # the option can also be switched off at run time
    server.control("config", native_progress=False)
    quiet = await run_prompt(server, native_graph("ds", steps=3, seed=10))
    assert quiet.status == "success" and quiet.progress("4") == []


async def test_interrupt_during_training_is_noticed_by_the_next_node(comfy_server: ComfyServer) -> None:
    comfy_server.control("config", step_delay=0.02)
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", CAPTIONED)
    sent: list[bool] = []

    async def interrupt_when_training(client: httpx.AsyncClient, frame: dict[str, Any]) -> None:
        if frame["type"] == "executing" and frame["data"].get("node") == "4" and not sent:
            await asyncio.sleep(0.1)
            assert (await client.post("/interrupt", json={})).status_code == 200
            sent.append(True)

    run = await run_prompt(comfy_server, native_graph("ds", steps=30), during=interrupt_when_training)
    assert sent and run.status == "error"
    interrupted = run.message("execution_interrupted")
    assert interrupted["node_id"] != "4" and "4" in interrupted["executed"]
    (entry,) = native_log(comfy_server)
    assert (entry["outcome"], entry["iterations"]) == ("completed", 30)  # no interrupt check while training
    assert interrupted["node_id"] in {"5", "6", "7", "14"}  # the next node to run raises it
    assert lora_files(comfy_server) == []


async def test_interrupt_with_native_progress_stops_training(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(native_progress=True, step_delay=0.02)
    make_model(server)
    make_dataset(server, "ds", CAPTIONED)

    async def interrupt_after_two_steps(client: httpx.AsyncClient, frame: dict[str, Any]) -> None:
        if frame["type"] == "progress" and frame["data"]["node"] == "4" and frame["data"]["value"] == 2:
            assert (await client.post("/interrupt", json={})).status_code == 200

    run = await run_prompt(server, native_graph("ds", steps=50), during=interrupt_after_two_steps)
    interrupted = run.message("execution_interrupted")
    assert (interrupted["node_id"], interrupted["node_type"]) == ("4", "TrainLoraNode")
    (entry,) = native_log(server)
    assert entry["outcome"] == "interrupted" and entry["iterations"] < 50
    assert lora_files(server) == []


# --- failures of the loaders and of existing_lora --------------------------------------------------------------


def _static_info(**lists: list[str]) -> dict[str, Any]:
    """The bundled object_info with fixed combo lists (kept as given by the server)."""
    from lorawf.comfy.schema import bundled_object_info

    info = copy.deepcopy(bundled_object_info())
    for key, values in lists.items():
        cls, name = key.split("__")
        info[cls]["input"]["required"][name][0] = values
    return info


async def test_missing_files_fail_like_get_full_path_or_raise(comfy_server_factory: Any) -> None:
    info = _static_info(
        CheckpointLoaderSimple__ckpt_name=[CKPT, "gone.safetensors"],
        TrainLoraNode__existing_lora=["ghost_5_steps_00001_.safetensors", "[None]"],
        LoadImageTextSetFromFolderNode__folder=["ds"],
    )
    server = comfy_server_factory(object_info=info)
    make_model(server)
    make_dataset(server, "ds", CAPTIONED)
    graph = native_graph("ds")
    graph["1"]["inputs"]["ckpt_name"] = "gone.safetensors"
    error = (await run_prompt(server, graph)).message("execution_error")
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "1", "FileNotFoundError", "Model in folder 'checkpoints' with filename 'gone.safetensors' not found.\n",
    )
    run = await run_prompt(server, native_graph("ds", existing_lora="ghost_5_steps_00001_.safetensors"))
    error = run.message("execution_error")
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "4", "FileNotFoundError",
        "Model in folder 'loras' with filename 'ghost_5_steps_00001_.safetensors' not found.\n",
    )
    assert native_log(server) == []


async def test_existing_lora_without_steps_in_its_name_fails_to_parse(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_model(comfy_server, "models/loras/my_style.safetensors")
    make_dataset(comfy_server, "ds", CAPTIONED)
    error = (await run_prompt(comfy_server, native_graph("ds", existing_lora="my_style.safetensors"))).message(
        "execution_error"
    )
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "4", "ValueError", "invalid literal for int() with base 10: 'style.safetensors'\n",
    )


async def test_empty_checkpoint_file_fails_to_load(comfy_server: ComfyServer) -> None:
    make_model(comfy_server, data=b"")
    make_dataset(comfy_server, "ds", CAPTIONED)
    error = (await run_prompt(comfy_server, native_graph("ds"))).message("execution_error")
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "1", "safetensors._safetensors_rust.SafetensorError", "Error while deserializing header: header too small\n",
    )


@pytest.mark.parametrize("strength", [0.0, 0.5])
async def test_lora_strength_shows_in_the_validation_image(comfy_server: ComfyServer, strength: float) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", CAPTIONED)
    graph = native_graph("ds", steps=3)
    graph["7"]["inputs"]["strength_model"] = strength
    run = await run_prompt(comfy_server, graph)
    assert run.status == "success"
    expected = sample_rgb([], VAL_SEED) if strength == 0 else sample_rgb([(3, strength)], VAL_SEED)
    assert pixel(comfy_server.root / "output" / "native_val_00001_.png") == expected


async def test_one_conditioning_is_used_for_every_image(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", CAPTIONED)
    graph = native_graph("ds", steps=2)
    graph["4"]["inputs"]["positive"] = ["8", 0]  # one CLIPTextEncode conditioning for three images
    graph["11"]["inputs"]["model"] = ["4", 0]  # model_with_lora carries the trained LoRA itself
    run = await run_prompt(comfy_server, graph)
    assert run.status == "success", run.entry["status"]
    record = read_fake_record(str(lora_dir(comfy_server) / "native_test_2_steps_00001_.safetensors"))
    assert record is not None and record["captions"] == ["a photo of sks"] * 3 and record["images"] == 3
    assert pixel(comfy_server.root / "output" / "native_val_00001_.png") == sample_rgb([(2, 1.0)], VAL_SEED)


async def test_single_step_loss_graph_divides_by_zero(comfy_server: ComfyServer) -> None:
    make_model(comfy_server)
    make_dataset(comfy_server, "ds", CAPTIONED)
    graph = native_graph("ds", steps=1)
    for node in ("5", "7", "8", "9", "10", "11", "12", "13", "14"):
        del graph[node]
    run = await run_prompt(comfy_server, graph)
    error = run.message("execution_error")
    # one loss value: min == max, so (l - min) / (max - min) fails, as in 0.3.64
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        "6", "ZeroDivisionError", "float division by zero\n",
    )
    assert "4" in error["executed"] and native_log(comfy_server)[0]["iterations"] == 1
    assert list((comfy_server.root / "temp").glob("loss_graph_*.png")) == []
