"""The native trainer, pure parts: its plan, its segment workflows against the real 0.3.64 schemas, the checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorawf.comfy.folders import ServerFolders
from lorawf.comfy.graph import is_link
from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import bundled_schemas
from lorawf.errors import DatasetError, OverrideError, UsageError
from lorawf.runs.native import apply_native_sets, bundled_prompts, check_captions, native_dataset_folder
from lorawf.training.dataset import scan_dataset
from lorawf.training.plan import PlanOverrides, format_plan, plan_training
from lorawf.workflow.native import NativeRun, saved_name, segment_bounds, segment_workflow

SCHEMAS = bundled_schemas()
LISTED_FIRST = "lorawf/ink-43img/ink-43img_250_steps_00001_.safetensors"


def native_plan(images: int = 43, model: str = "flux", **overrides: object):  # type: ignore[no-untyped-def]
    return plan_training(images, PlanOverrides(**overrides), model=model, trainer="native")  # type: ignore[arg-type]


def run_for(model: str) -> NativeRun:
    return NativeRun("ink-43img", model, "3d", bundled_prompts(model, "inkwash"))


def test_the_native_plan_keeps_the_seeds_rules_and_says_what_the_node_cannot_do() -> None:
    plan = native_plan(43)
    fluxtrainer = plan_training(43)
    assert (plan.max_train_steps, plan.checkpoint_steps, plan.learning_rate, plan.network_dim, plan.batch_size) == (
        fluxtrainer.max_train_steps, fluxtrainer.checkpoint_steps, 1e-4, 16, 2)
    assert (plan.optimizer, plan.lr_scheduler, plan.network_alpha, plan.trainer) == ("AdamW", "constant", 1.0, "native")
    text = format_plan(plan)
    assert "one prompt per checkpoint (7)" in text and "no alpha input" in text and "counts finished" in text
    assert plan.to_dict()["trainer"] == "native" and plan.to_dict()["model"] == "flux"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"network_alpha": 8.0}, "--alpha: the native trainer has no alpha"),
    ({"num_repeats": 3}, "--repeats 3: the native trainer draws every batch"),
    ({"network_dim": 256}, "--dim 256 is out of range: ComfyUI's TrainLoraNode accepts 1..128"),
    ({"learning_rate": 2.0}, "--lr 2 is out of range: ComfyUI's TrainLoraNode accepts 1e-07..1"),
])
def test_what_trainlora_cannot_take_is_refused_by_name(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(OverrideError, match=message.replace("(", r"\(").replace(".", r"\.")):
        native_plan(43, **overrides)


def test_fluxtrainer_takes_what_native_refuses() -> None:
    assert plan_training(43, PlanOverrides(network_alpha=8.0, network_dim=256)).network_alpha == 8.0


@pytest.mark.parametrize("model", ["flux", "sdxl", "sd35"])
@pytest.mark.parametrize("images", [15, 43, 100])
def test_segments_train_exactly_the_plan_each_from_the_last(model: str, images: int) -> None:
    plan = native_plan(images, model)
    run = run_for(model)
    previous = None
    trained = 0
    for index, step in enumerate(plan.checkpoint_steps):
        wf = segment_workflow(run, plan, index, previous)
        train = wf["20"]["inputs"]
        assert train["steps"] == step - trained and segment_bounds(plan, index) == (trained, step)
        assert train["existing_lora"] == (previous or "[None]")
        assert train["seed"] == index  # a new noise sequence per segment
        assert (train["rank"], train["learning_rate"], train["batch_size"]) == (16, 1e-4, 2)
        assert wf["21"]["inputs"] == {"lora": ["20", 1], "prefix": "loras/lorawf/ink-43img/ink-43img",
                                      "steps": ["20", 3]}
        assert wf["90"]["inputs"]["filename_prefix"] == f"lorawf/ink-43img/validation/val_step{step:05d}"
        for nid, node in wf.items():
            assert node["_meta"]["title"], nid
            for name, value in node["inputs"].items():
                if is_link(value):
                    assert value[0] in wf, f"{nid}.{name}"
        trained = step
        previous = f"lorawf/ink-43img/ink-43img_{step}_steps_00001_.safetensors"
    assert trained == plan.max_train_steps


@pytest.mark.parametrize("model", ["flux", "sdxl", "sd35"])
def test_segment_workflows_pass_the_real_schemas_but_for_files_the_snapshot_server_lacks(model: str) -> None:
    """The bundled snapshot is the recorded 0.3.64 server: it has Flux's files, no SDXL/SD3 checkpoint, no
    clip_g, and no LoRA yet; every other input (types, links, ranges, choices) must pass."""
    plan = native_plan(43, model)
    for index, existing in ((0, None), (1, LISTED_FIRST)):
        problems = preflight(segment_workflow(run_for(model), plan, index, existing), SCHEMAS)
        left = {(p.class_type, p.input) for p in problems}
        allowed = {("TrainLoraNode", "existing_lora"), ("CheckpointLoaderSimple", "ckpt_name"),
                   ("TripleCLIPLoader", "clip_name2")}
        assert left <= allowed, problems
        assert all(p.type == "value_not_in_list" for p in problems)
        if model == "flux":
            assert left == ({("TrainLoraNode", "existing_lora")} if index else set())


def test_validation_images_are_one_batch_in_prompt_order() -> None:
    wf = segment_workflow(run_for("flux"), native_plan(), 0, None)
    chain = []
    link = wf["90"]["inputs"]["images"]
    while wf[link[0]]["class_type"] == "ImageBatch":
        chain.append(wf[link[0]]["inputs"]["image2"][0])
        link = wf[link[0]]["inputs"]["image1"]
    chain.append(link[0])
    decoders = list(reversed(chain))
    texts = [wf[wf[wf[d]["inputs"]["samples"][0]]["inputs"]["positive"][0]]["inputs"]["conditioning"][0]
             for d in decoders]
    assert [wf[t]["inputs"]["text"] for t in texts] == list(bundled_prompts("flux", "inkwash"))
    assert all("inkwash" in wf[t]["inputs"]["text"] for t in texts)


def test_the_saved_file_is_found_in_the_loras_list_with_comfyuis_counter() -> None:
    run = run_for("flux")
    listed = ["other.safetensors", LISTED_FIRST, "lorawf/ink-43img/ink-43img_500_steps_00251_.safetensors",
              "lorawf/ink-43img-2/ink-43img-2_500_steps_00001_.safetensors", "[None]"]
    assert saved_name(listed, run, 250) == LISTED_FIRST
    assert saved_name(listed, run, 500) == "lorawf/ink-43img/ink-43img_500_steps_00251_.safetensors"
    assert saved_name(listed, run, 750) is None
    # Windows servers list with backslashes
    assert saved_name([LISTED_FIRST.replace("/", "\\")], run, 250) == LISTED_FIRST.replace("/", "\\")


def _dataset(tmp_path: Path, captions: dict[str, str | None]) -> Path:
    from PIL import Image

    for name, caption in captions.items():
        Image.new("RGB", (16, 16)).save(tmp_path / name)
        if caption is not None:
            (tmp_path / name).with_suffix(".txt").write_text(caption)
    return tmp_path


def test_an_image_without_caption_text_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    scan = scan_dataset(_dataset(tmp_path, {"a.png": "inkwash, a tree", "b.png": "  ", "c.png": None}))
    with pytest.raises(DatasetError, match=r"b\.png \(\+1 more\): no caption text.*Number of positive conditions"):
        check_captions(scan, "inkwash")


def test_captions_without_the_token_are_a_warning(tmp_path: Path) -> None:
    scan = scan_dataset(_dataset(tmp_path, {"a.png": "inkwash, a tree", "b.png": "a boat"}))
    assert check_captions(scan, "inkwash") == [
        ("1 of 2 captions do not mention the trigger token 'inkwash': the native trainer learns from the captions "
        "alone (FluxTrainer's class_tokens does not exist here)")]
    assert check_captions(scan_dataset(_dataset(tmp_path, {"b.png": "INKWASH boat"})), "inkwash") == []


def test_a_server_dataset_must_be_under_the_input_folder() -> None:
    folders = ServerFolders("/srv/comfy/input", "/srv/comfy/output")
    assert native_dataset_folder("/srv/comfy/input/styles/ink/", folders) == "styles/ink"
    with pytest.raises(UsageError, match="under ComfyUI's input folder"):
        native_dataset_folder("/data/ink", folders)


def test_set_reaches_model_files_but_not_what_the_plan_owns() -> None:
    wf = segment_workflow(run_for("flux"), native_plan(), 0, None)
    apply_native_sets(wf, SCHEMAS, ("1.weight_dtype=fp8_e4m3fn",))
    assert wf["1"]["inputs"]["weight_dtype"] == "fp8_e4m3fn"
    for item in ("20.steps=10", "TrainLoraNode.learning_rate=0.1", "21.prefix=x"):
        with pytest.raises(UsageError, match="planned by lorawf"):
            apply_native_sets(wf, SCHEMAS, (item,))


def test_segment_workflows_are_deterministic() -> None:
    plan = native_plan()
    a = json.dumps(segment_workflow(run_for("sdxl"), plan, 2, LISTED_FIRST), sort_keys=True)
    assert a == json.dumps(segment_workflow(run_for("sdxl"), plan, 2, LISTED_FIRST), sort_keys=True)
