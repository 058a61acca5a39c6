"""The fake ComfyUI server acting out FluxTrainer's SDXL and SD 3.5 nodes (nodes_sdxl.py, nodes_sd3.py at 639b3e8),
next to the Flux ones: what each family's Init writes, the files of a run, the validation images, the model files
each family loads, continuing from a state or from weights, and lorawf's patched bundled templates run to the end.

Every test posts prompts over HTTP to a real server process and looks only at what a client or the server
machine's disk shows: ``/history``, the files the nodes write and the test-only ``training_log``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorawf.training.families import FAMILIES
from lorawf.training.plan import PlanOverrides
from lorawf.workflow.build import build_workflow, load_template
from lorawf.workflow.patch import PatchOptions
from lorawf.workflow.templates import bundled_template_path
from tests.comfy_server.flux_nodes import read_fake_record
from tests.comfy_server.paths import FAKE_SAFETENSORS
from tests.comfy_server.plugin import ComfyServer
from tests.test_comfy_server_resume import error, ok, write_dataset

OUT = "trainer_output"  # relative: resolves against the ComfyUI folder
ALL = ["flux", "sdxl", "sd35"]
NEW = ["sdxl", "sd35"]
# the model files each family's Init loads (model-select input -> placeholder under the ComfyUI folder)
LOADED = {
    "flux": {"transformer": "models/unet/flux1-dev.safetensors", "vae": "models/vae/ae.safetensors",
             "clip_l": "models/clip/clip_l.safetensors", "t5": "models/clip/t5xxl_fp16.safetensors"},
    "sdxl": {"checkpoint": "models/checkpoints/sd_xl_base_1.0.safetensors"},
    "sd35": {"transformer": "models/checkpoints/sd3.5_large.safetensors", "clip_l": "models/clip/clip_l.safetensors",
             "clip_g": "models/clip/clip_g.safetensors", "t5": "models/clip/t5xxl_fp16.safetensors"},
}
SETTINGS = {  # each validation-settings class with all its inputs
    "FluxTrainValidationSettings": {"steps": 2, "width": 1020, "height": 200, "guidance_scale": 3.5, "seed": 7,
                                    "shift": True, "base_shift": 0.5, "max_shift": 1.15},
    "SDXLTrainValidationSettings": {"steps": 2, "width": 1020, "height": 200, "guidance_scale": 7.0,
                                    "sampler": "euler_a", "seed": 7},
    "SD3TrainValidationSettings": {"steps": 2, "width": 1020, "height": 200, "guidance_scale": 4.5, "seed": 7},
}
FAMILY_SETTINGS = {f: FAMILIES[f].validation_settings_class for f in ALL}


# --- helpers ------------------------------------------------------------------------------------------


def template(family: str) -> dict[str, Any]:
    return dict(load_template(bundled_template_path(family))[1])


def training_graph(family: str, dataset: str, *, max_steps: int, loops: list[int], output_name: str = "lora",
                   prompts: str = "a red square | # skipped | a blue square", validate: str | None = None,
                   settings: str | None = None, save_state: bool = False, lora: str | None = None,
                   resume: str | None = None, init: dict[str, Any] | None = None,
                   models: dict[str, str] | None = None) -> dict[str, Any]:
    """The bundled template's model select "101", dataset "102"/"103", optimizer "104", Init "105", validation
    settings "106" and prompt nodes; then per loop ``FluxTrainLoop`` "10<i>0" -> ``FluxTrainSave`` "10<i>1" ->
    the validate node "10<i>2" (the family's, or ``validate``; none when ``validate`` is "") with a ``PreviewAny``
    "10<i>3" of the save's ``lora_path`` and a ``SaveImage`` "10<i>4"; ``FluxTrainEnd`` "900", its path in "901"."""
    base = template(family)
    g: dict[str, Any] = {k: copy.deepcopy(v) for k, v in base.items() if k in ("101", "102", "103", "104", "105",
                                                                               "106", "146", "147")}
    g["101"]["inputs"].update(models or {})
    g["103"]["inputs"].update(dataset_path=dataset, batch_size=1)
    g["146"]["inputs"]["value"] = prompts
    g["105"]["inputs"].update(output_name=output_name, output_dir=OUT, max_train_steps=max_steps, network_dim=8,
                              **(init or {}))
    if settings is not None:
        g["106"] = {"class_type": settings, "inputs": dict(SETTINGS[settings])}
    else:
        g["106"]["inputs"].update(width=1020, height=200, seed=7)
    if lora is not None:  # lora_path is forceInput: a link
        g["60"] = {"class_type": "PrimitiveString", "inputs": {"value": lora}}
        g["101"]["inputs"]["lora_path"] = ["60", 0]
    if resume is not None:
        g["61"] = {"class_type": "FluxTrainResume", "inputs": {"load_state_path": resume,
                                                               "skip_until_initial_step": True}}
        g["105"]["inputs"]["resume_args"] = ["61", 0]
    validate = FAMILIES[family].validate_class if validate is None else validate
    previous = "105"
    for i, steps in enumerate(loops, start=1):
        loop, save, val = f"10{i}0", f"10{i}1", f"10{i}2"
        g[loop] = {"class_type": "FluxTrainLoop", "inputs": {"network_trainer": [previous, 0], "steps": steps}}
        g[save] = {"class_type": "FluxTrainSave", "inputs": {"network_trainer": [loop, 0], "save_state": save_state,
                                                             "copy_to_comfy_lora_folder": False}}
        g[f"10{i}3"] = {"class_type": "PreviewAny", "inputs": {"source": [save, 1]}}
        previous = save
        if validate:
            g[val] = {"class_type": validate,
                      "inputs": {"network_trainer": [save, 0], "validation_settings": ["106", 0]}}
            g[f"10{i}4"] = {"class_type": "SaveImage", "inputs": {"images": [val, 1],
                                                                 "filename_prefix": f"{output_name}/val{i}"}}
            previous = val
    g["900"] = {"class_type": "FluxTrainEnd", "inputs": {"network_trainer": [previous, 0], "save_state": False}}
    g["901"] = {"class_type": "PreviewAny", "inputs": {"source": ["900", 2]}}
    return g


def post(server: ComfyServer, prompt: dict[str, Any], **extra: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/prompt", json={"prompt": prompt, **extra}, timeout=30)


def run(server: ComfyServer, prompt: dict[str, Any], timeout: float = 120.0, **extra: Any) -> dict[str, Any]:
    """POST /prompt, then poll /history until the prompt is there; returns its history entry."""
    r = post(server, prompt, **extra)
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    deadline = time.monotonic() + timeout
    while True:
        hist = httpx.get(f"{server.url}/history/{pid}", timeout=30).json()
        if pid in hist:
            entry: dict[str, Any] = hist[pid]
            return entry
        assert time.monotonic() < deadline, f"{pid} did not finish"
        time.sleep(0.02)


def png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def log_of(server: ComfyServer) -> list[dict[str, Any]]:
    return list(server.state()["training_log"])


def stem(family: str, output_name: str = "lora", dim: int = 8) -> str:
    return f"{output_name}_rank{dim}_{FAMILIES[family].save_dtype}"


# --- Init -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL)
def test_init_dumps_the_kohya_arguments_of_its_family(comfy_server: ComfyServer, family: str) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    root = comfy_server.root
    graph = training_graph(family, ds, max_steps=2, loops=[2], output_name="dump", validate="")
    if family == "sdxl":
        graph["147"]["inputs"]["value"] = "blurry | lowres"
    ok(run(comfy_server, graph))
    out = root / OUT
    args = json.loads((out / "dump_args.json").read_text(encoding="utf-8"))
    # the prompts as the Init splits them ('|', nothing stripped); SDXL's negative ones beside them
    assert args["sample_prompts"] == ["a red square ", " # skipped ", " a blue square"]
    assert ("negative_prompts" in args) == (family == "sdxl")
    if family == "sdxl":
        assert args["negative_prompts"] == ["blurry ", " lowres"]
    assert args["output_name"] == stem(family, "dump")
    assert args["save_precision"] == FAMILIES[family].save_dtype and args["output_dir"] == OUT
    # each family's model files under kohya's names, as the model select found them
    names = {"flux": {"pretrained_model_name_or_path": "transformer", "clip_l": "clip_l", "t5xxl": "t5",
                      "ae": "vae"},
             "sdxl": {"pretrained_model_name_or_path": "checkpoint"},
             "sd35": {"pretrained_model_name_or_path": "transformer", "clip_l": "clip_l", "clip_g": "clip_g",
                      "t5xxl": "t5"}}[family]
    for key, model in names.items():
        assert args[key] == str(root / LOADED[family][model]), key
    for absent in {"clip_l", "clip_g", "t5xxl", "ae"} - set(names):
        assert absent not in args, absent
    assert args["network_module"] == {"flux": ".networks.lora_flux", "sdxl": ".networks.lora",
                                      "sd35": ".networks.lora_sd3"}[family]
    assert ("t5xxl_max_token_length" in args) == (family != "sdxl")
    assert args["network_args"] == (None if family == "sdxl" else [])
    # the template's choices as kohya flags; the Init's own parameters are not kohya arguments
    assert (args["cache_latents"], args["cache_latents_to_disk"], args["full_bf16"]) == (True, True, True)
    assert (args["network_dim"], args["max_train_steps"], args["mixed_precision"]) == (8, 2, "bf16")
    for own in ("sample_prompts_pos", "sample_prompts_neg", "attention_mode", "gradient_dtype", "save_dtype",
                "additional_args", FAMILIES[family].models_input, "dataset", "optimizer_settings"):
        assert own not in args, own
    assert args["optimizer_type"] == "adamw8bit"  # the optimizer settings are merged in
    # without extra_pnginfo the workflow dump is empty
    assert json.loads((out / "dump_workflow.json").read_text(encoding="utf-8")) == {}


def test_the_sd3_init_keeps_training_shift_with_its_trailing_space(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    out = comfy_server.root / OUT
    ok(run(comfy_server, training_graph("sd35", ds, max_steps=2, loops=[2], output_name="shift", validate="",
                                        init={"training_shift ": 3.0})))
    args = json.loads((out / "shift_args.json").read_text(encoding="utf-8"))
    # the input lands in kwargs under its own key: kohya's training_shift stays at argparse's default
    assert (args["training_shift "], args["training_shift"]) == (3.0, 1.0)
    ok(run(comfy_server, training_graph("sd35", ds, max_steps=2, loops=[2], output_name="flag", validate="",
                                        init={"additional_args": "--training_shift 2.5"})))
    args = json.loads((out / "flag_args.json").read_text(encoding="utf-8"))
    assert (args["training_shift "], args["training_shift"]) == (3.0, 2.5)


@pytest.mark.parametrize("family", NEW)
def test_init_writes_the_workflow_of_extra_pnginfo(comfy_server: ComfyServer, family: str) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    workflow = {"nodes": [{"id": 105, "type": FAMILIES[family].init_class}], "links": []}
    graph = training_graph(family, ds, max_steps=2, loops=[2], output_name="wf", validate="")
    ok(run(comfy_server, graph, extra_data={"extra_pnginfo": {"workflow": workflow}}))
    assert json.loads((comfy_server.root / OUT / "wf_workflow.json").read_text(encoding="utf-8")) == workflow
    # an extra_pnginfo without a workflow fails, after the args dump
    graph = training_graph(family, ds, max_steps=2, loops=[2], output_name="bad", validate="")
    err = error(run(comfy_server, graph, extra_data={"extra_pnginfo": {"other": 1}}))
    assert (err["node_id"], err["exception_type"], err["exception_message"]) == ("105", "KeyError", "'workflow'\n")
    assert (comfy_server.root / OUT / "bad_args.json").is_file()


# --- a run ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL)
def test_a_run_writes_its_checkpoints_final_file_and_validation_images(comfy_server: ComfyServer,
                                                                       family: str) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)  # L = 2 with batch 1, 1 repeat
    entry = ok(run(comfy_server, training_graph(family, ds, max_steps=5, loops=[3, 2])))
    out = comfy_server.root / OUT
    name = stem(family)
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert files == [f"{name}-step00003.safetensors", f"{name}-step00005.safetensors", f"{name}.safetensors"]
    assert entry["outputs"]["1013"] == {"text": [f"{OUT}/{name}-step00003.safetensors"]}
    assert entry["outputs"]["1023"] == {"text": [f"{OUT}/{name}-step00005.safetensors"]}
    assert entry["outputs"]["901"] == {"text": [f"{OUT}/{name}.safetensors"]}
    assert read_fake_record(str(out / f"{name}.safetensors"))["global_step"] == 5  # type: ignore[index]
    # the kept prompts (not "# skipped"), named by pass counter (2 after 3 steps, 3 after 5) and position
    samples = sorted(os.listdir(out / "sample"))  # <name>_e<pass>_<prompt>_<timestamp>_<the settings' seed>.png
    expected = [rf"{name}_e00000{e}_0{i}_\d{{14}}_7\.png" for e in (2, 3) for i in (0, 1)]
    assert len(samples) == 4 and all(re.fullmatch(pattern, s) for pattern, s in zip(expected, samples)), samples
    # width 1020, height 200: Flux's sampler rounds down to 16, SDXL's and SD3's to 8
    size = (1008, 192) if family == "flux" else (1016, 200)
    assert {png_size(out / "sample" / s) for s in samples} == {size}
    saved = [i["filename"] for i in entry["outputs"]["1014"]["images"] + entry["outputs"]["1024"]["images"]]
    assert saved == ["val1_00001_.png", "val1_00002_.png", "val2_00001_.png", "val2_00002_.png"]
    assert png_size(comfy_server.root / "output" / "lora" / "val2_00002_.png") == size
    log = log_of(comfy_server)
    assert [(e["family"], e["g_from"], e["g_to"]) for e in log] == [(family, 0, 3), (family, 3, 5)]


@pytest.mark.parametrize(
    ("family", "validate", "settings", "exception"),
    [
        ("sdxl", "FluxTrainValidate", None,
         ("TypeError", ("SdxlNetworkTrainer.sample_images() missing 6 required positional arguments: "
                        "'global_step', 'device', 'vae', 'tokenizer', 'text_encoder', and 'unet'"))),
        ("sd35", "SDXLTrainValidate", None,
         ("TypeError", "Sd3NetworkTrainer.sample_images() takes 4 positional arguments but 11 were given")),
        ("flux", "SDXLTrainValidate", None,
         ("TypeError", "FluxNetworkTrainer.sample_images() takes 4 positional arguments but 11 were given")),
        # each sampler reads its own settings keys
        ("sdxl", "SDXLTrainValidate", "SD3TrainValidationSettings", ("KeyError", "'sampler'")),
        ("flux", "FluxTrainValidate", "SD3TrainValidationSettings", ("KeyError", "'base_shift'")),
        ("sd35", "FluxTrainValidate", "SDXLTrainValidationSettings", None),  # more keys than it reads: fine
        ("sd35", "FluxTrainValidate", "FluxTrainValidationSettings", None),
    ],
)
def test_validation_needs_the_trainers_own_sampler_and_settings(comfy_server: ComfyServer, family: str,
                                                                validate: str, settings: str | None,
                                                                exception: tuple[str, str] | None) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    entry = run(comfy_server, training_graph(family, ds, max_steps=2, loops=[2], validate=validate,
                                             settings=settings or FAMILY_SETTINGS[family]))
    if exception is None:
        ok(entry)
        assert len(os.listdir(comfy_server.root / OUT / "sample")) == 2
        return
    err = error(entry)
    assert (err["node_id"], err["node_type"]) == ("1012", validate)
    assert (err["exception_type"], err["exception_message"]) == (exception[0], exception[1] + "\n")
    assert (comfy_server.root / OUT / f"{stem(family)}-step00002.safetensors").is_file()  # the save before it ran


@pytest.mark.parametrize("family", NEW)
def test_validation_without_prompts_or_settings(comfy_server: ComfyServer, family: str) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    graph = training_graph(family, ds, max_steps=2, loops=[2], output_name="plain",
                           prompts="a red square --w 300 --h 100 --d 5 | a blue square")
    del graph["1012"]["inputs"]["validation_settings"]  # optional: the prompt options then decide
    ok(run(comfy_server, graph))
    samples = sorted((comfy_server.root / OUT / "sample").iterdir())
    assert [(png_size(p), p.name.endswith("_5.png")) for p in samples] == [((296, 96), True), ((512, 512), False)]
    # no prompt left: nothing to concatenate
    err = error(run(comfy_server, training_graph(family, ds, max_steps=2, loops=[2], output_name="none",
                                                 prompts="# only | #a comment")))
    assert (err["node_id"], err["exception_type"]) == ("1012", "RuntimeError")
    assert err["exception_message"] == "torch.cat(): expected a non-empty list of Tensors\n"


# --- model files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL)
def test_each_model_file_the_family_loads_fails_when_empty(comfy_server: ComfyServer, family: str) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    root = comfy_server.root
    for i, (model, rel) in enumerate(LOADED[family].items()):
        (root / rel).write_bytes(b"")
        err = error(run(comfy_server, training_graph(family, ds, max_steps=2, loops=[2], output_name=f"e{i}")))
        assert (err["node_id"], err["node_type"]) == ("105", FAMILIES[family].init_class), model
        assert (err["exception_type"], err["exception_message"]) == (
            "safetensors._safetensors_rust.SafetensorError", "Error while deserializing header: header too small\n")
        assert (root / OUT / f"e{i}_args.json").is_file() and (root / OUT / f"e{i}_workflow.json").is_file()
        (root / rel).write_bytes(FAKE_SAFETENSORS)
    # the other families' files are not loaded: empty, they change nothing
    others = {rel for f in ALL if f != family for rel in LOADED[f].values()} - set(LOADED[family].values())
    for rel in others:
        (root / rel).write_bytes(b"")
    ok(run(comfy_server, training_graph(family, ds, max_steps=2, loops=[2], output_name="fine")))


def test_empty_placeholders_fail_every_family_in_init(comfy_server_factory: Any) -> None:
    server = comfy_server_factory(models="empty")
    ds = write_dataset(server, "input/ds", 2)
    for family in ALL:
        err = error(run(server, training_graph(family, ds, max_steps=2, loops=[2], output_name=family)))
        assert (err["node_type"], err["exception_type"]) == (
            FAMILIES[family].init_class, "safetensors._safetensors_rust.SafetensorError")


def test_a_non_safetensors_checkpoint_is_torch_loaded_by_sdxl_only(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    (comfy_server.root / "models" / "checkpoints" / "empty.ckpt").write_bytes(b"")
    err = error(run(comfy_server, training_graph("sdxl", ds, max_steps=2, loops=[2], output_name="x",
                                                 models={"checkpoint": "empty.ckpt"})))
    assert (err["exception_type"], err["exception_message"]) == ("EOFError", "Ran out of input\n")
    err = error(run(comfy_server, training_graph("sd35", ds, max_steps=2, loops=[2], output_name="y",
                                                 models={"transformer": "empty.ckpt"})))
    assert err["exception_type"] == "safetensors._safetensors_rust.SafetensorError"


@pytest.mark.parametrize("family", NEW)
def test_a_model_file_not_on_the_server_is_refused_by_validation(comfy_server: ComfyServer, family: str) -> None:
    ds = write_dataset(comfy_server, "input/ds", 2)
    first = next(iter(LOADED[family]))
    r = post(comfy_server, training_graph(family, ds, max_steps=2, loops=[2], models={first: "nope.safetensors"}))
    assert r.status_code == 400
    (problem,) = r.json()["node_errors"]["101"]["errors"]
    assert (problem["type"], problem["extra_info"]["input_name"]) == ("value_not_in_list", first)
    assert not (comfy_server.root / OUT).exists()


# --- continuing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW)
def test_a_family_run_continues_from_its_state_or_from_its_weights(comfy_server: ComfyServer,
                                                                   family: str) -> None:
    """InitSDXLLoRATraining and InitSD3LoRATraining take resume_args, their model selects a lora_path that becomes
    network_weights (nodes_sdxl.py:210-220, nodes_sd3.py:223-233): kohya's shared init_train does the rest."""
    ds = write_dataset(comfy_server, "input/ds", 2)
    out = comfy_server.root / OUT
    ok(run(comfy_server, training_graph(family, ds, max_steps=6, loops=[4], output_name="first", validate="",
                                        save_state=True)))
    first = stem(family, "first")
    state = f"{OUT}/{first}-step00004-state"
    assert json.loads((comfy_server.root / state / "train_state.json").read_text()) == {"current_epoch": 2,
                                                                                        "current_step": 4}
    # exact: the state's step and schedule go on
    ok(run(comfy_server, training_graph(family, ds, max_steps=6, loops=[2], output_name="res", validate="",
                                        resume=state)))
    resumed = log_of(comfy_server)[-1]
    assert (resumed["family"], resumed["resumed_from"]) == (family, 4)
    assert (resumed["from_step"], resumed["to_step"]) == (4, 6)
    args = json.loads((out / "res_args.json").read_text(encoding="utf-8"))
    assert (args["resume"], args["skip_until_initial_step"]) == (state, True)
    # weights: a fresh schedule from the checkpoint's weights
    lora = f"{OUT}/{first}-step00004.safetensors"
    ok(run(comfy_server, training_graph(family, ds, max_steps=3, loops=[3], output_name="wts", validate="",
                                        lora=lora)))
    args = json.loads((out / "wts_args.json").read_text(encoding="utf-8"))
    assert args["network_weights"] == lora and "resume" not in args
    record = read_fake_record(str(out / f"{stem(family, 'wts')}.safetensors"))
    assert record is not None
    assert (record["weights_from"], record["scheduler_step"], record["trained_steps"]) == (lora, 3, 7)
    # the same failures as the Flux Init's
    cases = [({"resume": f"{OUT}/nope"}, "ValueError", f"Tried to find {OUT}/nope but folder does not exist"),
             ({"resume": state, "max_steps": 4}, "AssertionError",
              "max_train_steps should be greater than initial step: 4 vs 4"),
             ({"lora": f"{OUT}/nope.safetensors"}, "FileNotFoundError",
              f'No such file or directory: "{OUT}/nope.safetensors"')]
    for i, (case, kind, text) in enumerate(cases):
        steps = int(case.pop("max_steps", 6))
        err = error(run(comfy_server, training_graph(family, ds, max_steps=steps, loops=[2], output_name=f"f{i}",
                                                     validate="", **case)))
        assert (err["node_id"], err["exception_type"], err["exception_message"]) == ("105", kind, text + "\n")


# --- lorawf's bundled templates ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW)
def test_a_bundled_template_patched_by_lorawf_runs_to_the_end(comfy_server: ComfyServer, family: str) -> None:
    root = comfy_server.root
    ds = write_dataset(comfy_server, "input/six", 6)
    name = f"{family}-run"
    options = PatchOptions("inkwash", str(root / ds), str(root / "output" / "lorawf" / name), name)
    overrides = PlanOverrides(max_train_steps=25, checkpoint_interval=10)
    built = build_workflow(6, options, overrides, bundled_template_path(family))
    plan, workflow = built.plan, built.patch.workflow
    assert (plan.model, plan.checkpoint_steps) == (family, (10, 20, 25))
    fam = FAMILIES[family]
    classes = [node["class_type"] for node in workflow.values()]
    assert classes.count(fam.validate_class) == 3 and fam.init_class in classes
    entry = ok(run(comfy_server, workflow, timeout=180))
    out = root / "output" / "lorawf" / name
    dim = plan.network_dim
    written = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert written == sorted([fam.file_name(name, dim, step) for step in plan.checkpoint_steps]
                             + [fam.file_name(name, dim)])
    # every checkpoint path shown by the template's previews, the final one too
    shown = sorted(text for output in entry["outputs"].values() for text in output.get("text", []))
    assert shown == sorted(str(out / f) for f in written)
    # six prompts per checkpoint, at the template's 1024 x 1024, written by the trainer and saved by SaveImage
    samples = sorted((out / "sample").iterdir())
    assert len(samples) == 6 * 3 and png_size(samples[0]) == (1024, 1024)
    images = [i for output in entry["outputs"].values() for i in output.get("images", [])]
    assert len(images) == 18 and {i["subfolder"] for i in images} == {name}
    log = log_of(comfy_server)
    assert {e["family"] for e in log} == {family} and sum(e["g_to"] - e["g_from"] for e in log) == 25
