"""The user's own templates: other node packs, other shapes, other ids. Pure: patch and check, no server."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.graph import is_link
from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import bundled_schemas
from lorawf.errors import OverrideError, TokenError
from lorawf.training.plan import plan_training
from lorawf.workflow.patch import PLACEHOLDER, PatchOptions, patch_workflow, training_steps
from lorawf.workflow.templates import bundled_template_path

SCHEMAS = bundled_schemas()
Workflow = dict[str, Any]


@pytest.fixture
def template() -> Workflow:
    data: Workflow = json.loads(Path(bundled_template_path()).read_text())
    return data


def of_class(workflow: Workflow, cls: str) -> list[str]:
    return [nid for nid, node in workflow.items() if node["class_type"] == cls]


def single_block(template: Workflow) -> Workflow:
    """The bundled template cut down to its first block, with one loop training everything (the common shape)."""
    wf = {nid: copy.deepcopy(node) for nid, node in template.items() if not (1020 <= int(nid) < 1100)}
    wf["1010"]["inputs"]["steps"] = 1720
    wf["900"]["inputs"]["network_trainer"] = ["1012", 0]
    return wf


def assert_exact(workflow: Workflow, images: int) -> None:
    """Loops add up to the plan, a checkpoint at every K and at the end, every link resolves."""
    plan = plan_training(images)
    total, loops = training_steps(workflow, SCHEMAS)
    assert total == plan.max_train_steps and loops == list(plan.loop_steps)
    assert len(of_class(workflow, "FluxTrainSave")) == len(plan.checkpoint_steps)
    for nid, node in workflow.items():
        for name, value in node["inputs"].items():
            if is_link(value):
                assert value[0] in workflow, f"node {nid} input {name} links to missing node {value[0]}"
    assert PLACEHOLDER not in json.dumps(workflow)


def with_foreign_nodes(template: Workflow) -> Workflow:
    wf = single_block(template)
    prompts = wf["146"]["inputs"]["value"]
    wf["146"] = {"inputs": {"string": prompts, "strip_newlines": False}, "class_type": "StringConstantMultiline",
                 "_meta": {"title": "Validation prompts ('|'-separated; STYLE_TOKEN becomes the trigger token)"}}
    wf["88"] = {"inputs": {"source": ["105", 1]}, "class_type": "Display Any (rgthree)",
                "_meta": {"title": "Number of epochs"}}
    return wf


@pytest.mark.parametrize("images", [15, 43, 100])
def test_a_single_loop_template_with_other_packs_patches_exactly(template: Workflow, images: int) -> None:
    wf = with_foreign_nodes(template)
    result = patch_workflow(wf, plan_training(images), PatchOptions(token="inkwash"), SCHEMAS)
    out = result.workflow
    assert_exact(out, images)
    # the foreign nodes are there once, untouched but for the placeholder
    assert out["88"] == wf["88"]
    assert out["146"]["class_type"] == "StringConstantMultiline"
    assert out["146"]["inputs"]["string"] == wf["146"]["inputs"]["string"].replace(PLACEHOLDER, "inkwash")
    assert out["146"]["_meta"]["title"] == "Validation prompts ('|'-separated; inkwash becomes the trigger token)"
    assert out["105"]["inputs"]["sample_prompts"] == ["146", 0]
    assert sorted(result.unchecked) == [
        'node 146 StringConstantMultiline "Validation prompts (\'|\'-separated; inkwash becomes the trigger token)"',
        'node 88 Display Any (rgthree) "Number of epochs"']


def test_the_43_image_run_of_the_single_loop_template(template: Workflow) -> None:
    out = patch_workflow(with_foreign_nodes(template), plan_training(43), PatchOptions(token="inkwash"),
                         SCHEMAS).workflow
    loops = [out[n]["inputs"]["steps"] for n in of_class(out, "FluxTrainLoop")]
    assert loops == [250] * 6 + [220] and sum(loops) == 1720
    titles = [out[n]["_meta"]["title"] for n in of_class(out, "FluxTrainSave")]
    assert titles == [f"Save LoRA checkpoint @ step {s}" for s in (250, 500, 750, 1000, 1250, 1500, 1720)]
    add = out[of_class(out, "TrainDatasetAdd")[0]]
    assert add["inputs"]["class_tokens"] == "inkwash"


def test_a_node_hanging_off_a_block_stays_once_linked_to_the_new_chain(template: Workflow) -> None:
    wf = copy.deepcopy(template)
    # a loss plot of the trainer after the last template block, and a saver of its picture
    style = (SCHEMAS["VisualizeLoss"].inputs["plot_style"].choices or ("fast",))[0]
    wf["950"] = {"inputs": {"network_trainer": ["1072", 0], "plot_style": style, "window_size": 100,
                            "normalize_y": True, "width": 768, "height": 512, "log_scale": False},
                 "class_type": "VisualizeLoss", "_meta": {"title": "Loss"}}
    wf["951"] = {"inputs": {"images": ["950", 0], "filename_prefix": "loss"}, "class_type": "SaveImage"}
    for images in (15, 100):
        out = patch_workflow(wf, plan_training(images), PatchOptions(token="ink"), SCHEMAS).workflow
        assert_exact(out, images)
        assert of_class(out, "VisualizeLoss") == ["950"] and out["951"]["inputs"]["images"] == ["950", 0]
        last_validate = of_class(out, "FluxTrainValidate")[-1]
        assert out["950"]["inputs"]["network_trainer"] == [last_validate, 0]
        assert not [p for p in preflight(out, SCHEMAS) if p.type != "undeclared_input"]


def test_a_display_of_each_checkpoint_is_copied_into_every_block(template: Workflow) -> None:
    wf = single_block(template)
    wf["1015"] = {"inputs": {"source": ["1011", 2]}, "class_type": "PreviewAny", "_meta": {"title": "Steps"}}
    out = patch_workflow(wf, plan_training(43), PatchOptions(token="ink"), SCHEMAS).workflow
    saves = of_class(out, "FluxTrainSave")
    step_previews = [n for n in of_class(out, "PreviewAny")
                     if out[n]["inputs"]["source"][1] == 2 and out[n]["inputs"]["source"][0] in saves]
    assert sorted(out[n]["inputs"]["source"][0] for n in step_previews) == sorted(saves)


def test_a_template_without_validation_says_so_once(template: Workflow) -> None:
    wf = single_block(template)
    del wf["1012"], wf["1014"]
    wf["900"]["inputs"]["network_trainer"] = ["1011", 0]
    result = patch_workflow(wf, plan_training(43), PatchOptions(token="ink"), SCHEMAS)
    assert_exact(result.workflow, 43)
    assert not of_class(result.workflow, "FluxTrainValidate")
    assert [n for n in result.notes if "no FluxTrainValidate" in n] == [result.notes[0]]


def test_literal_prompts_on_the_init_node(template: Workflow) -> None:
    wf = single_block(template)
    wf["105"]["inputs"]["sample_prompts"] = wf.pop("146")["inputs"]["value"]
    out = patch_workflow(wf, plan_training(43), PatchOptions(token="ink"), SCHEMAS).workflow
    assert "ink" in out["105"]["inputs"]["sample_prompts"]
    assert_exact(out, 43)


@pytest.mark.parametrize("token", ["--n", "-- x", "--w"])
def test_a_token_that_would_start_a_kohya_option_in_the_prompts_is_refused(template: Workflow, token: str) -> None:
    with pytest.raises(TokenError, match="reads as a prompt option"):
        patch_workflow(template, plan_training(43), PatchOptions(token=token), SCHEMAS)


def test_a_template_that_uses_kohya_prompt_options_itself_is_fine(template: Workflow) -> None:
    template["146"]["inputs"]["value"] = template["146"]["inputs"]["value"].replace("|", " --w 512 --h 512|", 1)
    out = patch_workflow(template, plan_training(43), PatchOptions(token="ink-wash"), SCHEMAS).workflow
    assert " --w 512" in out["146"]["inputs"]["value"]


def test_names_too_long_for_the_file_system_are_refused_by_patch_and_by_validate(template: Workflow) -> None:
    with pytest.raises(OverrideError, match="give a shorter --output-name"):
        patch_workflow(template, plan_training(43), PatchOptions(token="ink", output_name="n" * 240), SCHEMAS)
    with pytest.raises(OverrideError, match="from --token"):
        patch_workflow(template, plan_training(43), PatchOptions(token="k" * 10_000), SCHEMAS)
    ok = patch_workflow(template, plan_training(43), PatchOptions(token="ink", output_name="n" * 200),
                        SCHEMAS).workflow
    assert not [p for p in preflight(ok, SCHEMAS) if p.type == "file_name_too_long"]
    ok["105"]["inputs"]["output_name"] = "n" * 300
    (problem,) = [p for p in preflight(ok, SCHEMAS) if p.type == "file_name_too_long"]
    assert problem.node_id == "105" and problem.input == "output_name"
