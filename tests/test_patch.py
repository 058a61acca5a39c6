"""The patcher writes the plan into the template by role, exactly, deterministically and only into declared inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from lorawf.comfy.schema import bundled_schemas
from lorawf.comfy.validate import validate_prompt
from lorawf.errors import OverrideError, TemplateError, TokenError
from lorawf.training.plan import PlanOverrides, plan_training
from lorawf.workflow.io import dumps_workflow
from lorawf.workflow.patch import PatchOptions, find_roles, patch_workflow, training_steps, validate_token
from lorawf.workflow.templates import bundled_template_path

SCHEMAS = bundled_schemas()


@pytest.fixture
def template() -> dict[str, Any]:
    return json.loads(bundled_template_path().read_text(encoding="utf-8"))


def of_class(workflow: dict[str, Any], cls: str) -> list[dict[str, Any]]:
    return [n for n in workflow.values() if n["class_type"] == cls]


def test_template_passes_the_server_schema_check(template: dict[str, Any]) -> None:
    verdict = validate_prompt(template, SCHEMAS)
    assert verdict.ok, verdict.node_errors
    assert verdict.node_errors == {}


def test_template_defaults_and_pitfalls(template: dict[str, Any]) -> None:
    (init,) = of_class(template, "InitFluxLoRATraining")
    (add,) = of_class(template, "TrainDatasetAdd")
    assert init["inputs"]["learning_rate"] == 1e-4 and add["inputs"]["num_repeats"] == 1
    assert (init["inputs"]["network_dim"], init["inputs"]["network_alpha"], add["inputs"]["batch_size"]) == (16, 16.0, 2)
    assert init["inputs"]["gradient_dtype"] == "bf16" and init["inputs"]["additional_args"] == ""
    assert "network_config" not in init["inputs"]
    (opt,) = of_class(template, "OptimizerConfig")
    assert (opt["inputs"]["optimizer_type"], opt["inputs"]["lr_scheduler"]) == ("adamw8bit", "cosine_with_restarts")
    assert of_class(template, "TrainDatasetGeneralConfig")[0]["inputs"]["reset_on_queue"] is True
    assert all(n["inputs"]["save_state"] is False for n in of_class(template, "FluxTrainSave") + of_class(template, "FluxTrainEnd"))
    assert all(n.get("_meta", {}).get("title") for n in template.values())
    prompts = template["146"]["inputs"]["value"]
    assert init["inputs"]["sample_prompts"] == ["146", 0]
    assert len(prompts.split("|")) >= 4 and all("STYLE_TOKEN" in p for p in prompts.split("|"))
    total, loops = training_steps(template, SCHEMAS)
    assert sum(loops) == total and all(1 <= s <= 10000 for s in loops)


@pytest.mark.parametrize("images", [1, 15, 30, 43, 60, 100, 250])
def test_patched_run_trains_exactly_and_checkpoints_on_schedule(template: dict[str, Any], images: int) -> None:
    plan = plan_training(images)
    result = patch_workflow(template, plan, PatchOptions(token="inkwash"), SCHEMAS)
    wf = result.workflow
    assert validate_prompt(wf, SCHEMAS).ok
    total, loops = training_steps(wf, SCHEMAS)
    assert total == plan.max_train_steps == sum(loops)
    assert tuple(loops) == plan.loop_steps
    # one save + one validation image saver per checkpoint, in chain order, with the step in its prefix
    prefixes = [n["inputs"]["filename_prefix"] for n in of_class(wf, "SaveImage")]
    assert prefixes == [f"inkwash_lora/val_step{s:05d}" for s in plan.checkpoint_steps]
    assert len(of_class(wf, "FluxTrainSave")) == len(plan.checkpoint_steps)
    assert len(of_class(wf, "PreviewAny")) == len(plan.checkpoint_steps) + 1  # + the final LoRA path


def test_values_land_in_the_right_inputs(template: dict[str, Any]) -> None:
    plan = plan_training(60, PlanOverrides(network_dim=32))
    wf = patch_workflow(
        template, plan,
        PatchOptions(token="inkwash", dataset_path=" /data/ink ", output_dir="/srv/out", output_name="ink_v2"),
        SCHEMAS,
    ).workflow
    (init,) = of_class(wf, "InitFluxLoRATraining")
    (add,) = of_class(wf, "TrainDatasetAdd")
    assert init["inputs"]["max_train_steps"] == 2400
    assert (init["inputs"]["network_dim"], init["inputs"]["network_alpha"]) == (32, 32.0)
    assert isinstance(init["inputs"]["network_alpha"], float)
    assert (init["inputs"]["output_dir"], init["inputs"]["output_name"]) == ("/srv/out", "ink_v2")
    assert add["inputs"]["dataset_path"] == "/data/ink"  # stripped: a trailing space breaks the trainer
    assert add["inputs"]["class_tokens"] == "inkwash"
    assert "STYLE_TOKEN" not in json.dumps([n["inputs"] for n in wf.values()])


def test_roles_are_found_on_a_renumbered_template(template: dict[str, Any]) -> None:
    mapping = {old: str(5000 + i * 7) for i, old in enumerate(template)}
    renumbered: dict[str, Any] = {}
    for old, node in template.items():
        node = copy.deepcopy(node)
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] in mapping:
                node["inputs"][name] = [mapping[value[0]], value[1]]
        renumbered[mapping[old]] = node
    plan = plan_training(15)
    wf = patch_workflow(renumbered, plan, PatchOptions(token="ink"), SCHEMAS).workflow
    assert validate_prompt(wf, SCHEMAS).ok
    total, loops = training_steps(wf, SCHEMAS)
    assert (total, sum(loops)) == (600, 600)
    assert "ink style" in wf[mapping["146"]]["inputs"]["value"]
    kept = set(mapping.values())
    loops = [nid for nid, n in wf.items() if n["class_type"] == "FluxTrainLoop"]
    assert len(loops) == 6 and not kept & set(loops)  # generated block ids do not collide with the template's


def test_output_is_deterministic_and_the_emitted_patch_reproduces_it(template: dict[str, Any]) -> None:
    plan = plan_training(30)
    opts = PatchOptions(token="inkwash", sets=("106.steps=12",))
    first = patch_workflow(copy.deepcopy(template), plan, opts, SCHEMAS)
    second = patch_workflow(copy.deepcopy(template), plan, opts, SCHEMAS)
    assert dumps_workflow(first.workflow) == dumps_workflow(second.workflow)
    assert json.dumps(first.operations) == json.dumps(second.operations)
    assert jsonpatch.apply_patch(template, first.operations) == first.workflow
    text = dumps_workflow(first.workflow)
    assert text.endswith("}\n") and text.startswith('{\n  "')
    assert list(first.workflow)[:7] == list(template)[:7]  # key order kept


def test_unchanged_plan_patches_only_what_differs(template: dict[str, Any]) -> None:
    ops = patch_workflow(template, plan_training(43), PatchOptions(token="ink"), SCHEMAS).operations
    assert {op["op"] for op in ops} == {"replace"}
    assert not any(op["path"].endswith("/steps") for op in ops)


@pytest.mark.parametrize("token", ['say "ink"', "back\\slash", "ünïcode 墨", "a'b"])
def test_quotes_and_backslashes_survive_json(template: dict[str, Any], token: str) -> None:
    wf = patch_workflow(template, plan_training(15), PatchOptions(token=token), SCHEMAS).workflow
    reloaded = json.loads(dumps_workflow(wf))
    assert reloaded == wf
    assert all(token in p for p in reloaded["146"]["inputs"]["value"].split("|"))
    (add,) = of_class(reloaded, "TrainDatasetAdd")
    assert add["inputs"]["class_tokens"] == token
    (init,) = of_class(reloaded, "InitFluxLoRATraining")
    assert all(c.isalnum() or c in "._-" for c in init["inputs"]["output_name"])  # safe file-name stem


@pytest.mark.parametrize(
    ("token", "message"),
    [("", "empty"), ("   ", "empty"), (" ink", "whitespace"), ("a|b", r"'\|'"), ("a\nb", "newline"),
     ("a\x00b", "control"), ("a\u200bb", "control"), ("ink --w 512", "prompt option"), ("STYLE_TOKEN", "placeholder")],
)
def test_bad_tokens(token: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        validate_token(token)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("106.steps=999", "out of range"),
        ("106.steps=abc", "whole number"),
        ("106.guidance_scale=nan", "finite"),
        ("106.shift=maybe", "true or false"),
        ("106.nope=1", "has no input 'nope'"),
        ("NoSuchNode.x=1", "no node with id or class_type"),
        ("no_equals_sign", "expected NODE_ID.input=VALUE"),
        ("InitFluxLoRATraining.max_train_steps=10", "use --steps"),
        ("FluxTrainLoop.steps=10", "--interval"),
        ("InitFluxLoRATraining.learning_rate=1", "use --lr"),
        ("InitFluxLoRATraining.cache_latents=ram", "not allowed"),
        ("InitFluxLoRATraining.flux_models=x", "link input"),
    ],
)
def test_bad_sets(template: dict[str, Any], assignment: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        patch_workflow(template, plan_training(43), PatchOptions(token="ink", sets=(assignment,)), SCHEMAS)


def test_sets_are_typed_and_applied_by_id_or_class(template: dict[str, Any]) -> None:
    sets = ("106.steps=8", "FluxTrainSave.copy_to_comfy_lora_folder=yes", "106.guidance_scale=4",
            "FluxTrainModelSelect.t5=t5/t5xxl_fp8.safetensors")
    wf = patch_workflow(template, plan_training(43), PatchOptions(token="ink", sets=sets), SCHEMAS).workflow
    assert wf["106"]["inputs"]["steps"] == 8
    assert wf["106"]["inputs"]["guidance_scale"] == 4.0 and isinstance(wf["106"]["inputs"]["guidance_scale"], float)
    assert all(n["inputs"]["copy_to_comfy_lora_folder"] is True for n in of_class(wf, "FluxTrainSave"))
    assert of_class(wf, "FluxTrainModelSelect")[0]["inputs"]["t5"] == "t5/t5xxl_fp8.safetensors"


def drop(workflow: dict[str, Any], cls: str) -> dict[str, Any]:
    return {k: v for k, v in workflow.items() if v["class_type"] != cls}


def test_template_errors_name_the_role(template: dict[str, Any]) -> None:
    plan, opts = plan_training(43), PatchOptions(token="ink")
    with pytest.raises(TemplateError, match="no InitFluxLoRATraining, InitSDXLLoRATraining or InitSD3LoRATraining "
                                            "node found"):
        patch_workflow(drop(template, "InitFluxLoRATraining"), plan, opts, SCHEMAS)
    doubled = copy.deepcopy(template)
    doubled["777"] = copy.deepcopy(template["105"])
    with pytest.raises(TemplateError, match="2 training initialiser nodes"):
        patch_workflow(doubled, plan, opts, SCHEMAS)
    branched = copy.deepcopy(template)
    branched["778"] = {"class_type": "FluxTrainLoop", "inputs": {"network_trainer": ["105", 0], "steps": 5}}
    with pytest.raises(TemplateError, match="must be linear"):
        patch_workflow(branched, plan, opts, SCHEMAS)
    patched = patch_workflow(template, plan, opts, SCHEMAS).workflow
    with pytest.raises(TemplateError, match="no STYLE_TOKEN placeholder|STYLE_TOKEN placeholder"):
        patch_workflow(patched, plan, opts, SCHEMAS)
    netcfg = copy.deepcopy(template)
    netcfg["779"] = {"class_type": "TrainNetworkConfig", "inputs": {"network_type": "lora", "lycoris_preset": "full",
                                                                     "factor": -1, "extra_network_args": ""}}
    netcfg["105"]["inputs"]["network_config"] = ["779", 0]
    with pytest.raises(TemplateError, match="TrainNetworkConfig"):
        patch_workflow(netcfg, plan, opts, SCHEMAS)
    no_end = drop(template, "FluxTrainEnd")
    with pytest.raises(TemplateError, match="does not end in a FluxTrainEnd"):
        patch_workflow(no_end, plan, opts, SCHEMAS)


def test_and_validate_loop_is_rewritten_into_the_exact_chain(template: dict[str, Any]) -> None:
    wf = {k: v for k, v in template.items() if int(k) < 1000 and v["class_type"] != "FluxTrainEnd"}
    wf["500"] = {"class_type": "FluxTrainAndValidateLoop",
                 "inputs": {"network_trainer": ["105", 0], "validate_at_steps": 250, "save_at_steps": 250,
                            "validation_settings": ["106", 0]}}
    wf["900"] = {"class_type": "FluxTrainEnd", "inputs": {"network_trainer": ["500", 0], "save_state": False}}
    wf["901"] = {"class_type": "PreviewAny", "inputs": {"source": ["900", 2]}}
    plan = plan_training(43)
    result = patch_workflow(wf, plan, PatchOptions(token="ink"), SCHEMAS)
    out = result.workflow
    assert not of_class(out, "FluxTrainAndValidateLoop")
    assert training_steps(out, SCHEMAS) == (1720, list(plan.loop_steps))
    assert len(of_class(out, "FluxTrainSave")) == len(plan.checkpoint_steps)
    validates = of_class(out, "FluxTrainValidate")
    assert len(validates) == len(plan.checkpoint_steps)
    assert all(v["inputs"]["validation_settings"] == ["106", 0] for v in validates)  # the same settings
    assert validate_prompt(out, SCHEMAS).ok
    (note,) = [n for n in result.notes if "FluxTrainAndValidateLoop" in n]
    assert "rewritten into FluxTrainLoop -> FluxTrainSave -> FluxTrainValidate" in note and "node 106" in note


def test_only_declared_inputs_are_written(template: dict[str, Any]) -> None:
    wf = patch_workflow(template, plan_training(43), PatchOptions(token="ink"), SCHEMAS).workflow
    for nid, node in wf.items():
        declared = SCHEMAS[node["class_type"]].inputs
        assert set(node["inputs"]) <= set(declared), nid


def test_roles(template: dict[str, Any]) -> None:
    roles = find_roles(template, SCHEMAS)
    assert roles.prompts == ("146", "value")
    assert len(roles.blocks) == 7
    assert [template[n]["class_type"] for n in roles.blocks[0].chain] == ["FluxTrainLoop", "FluxTrainSave",
                                                                         "FluxTrainValidate"]


def test_committed_generated_workflows_are_valid() -> None:
    """Flux's pass the recorded server whole; SDXL's and SD 3.5's but for their model files, which that server
    did not have (its checkpoints list is empty and it has no clip_g)."""
    from lorawf.comfy.preflight import preflight
    from lorawf.workflow.patch import template_family

    paths = sorted((Path(__file__).parent.parent / "workflows" / "generated").glob("*.json"))
    assert {template_family(json.loads(p.read_text())).name for p in paths} == {"flux", "sdxl", "sd35"}  # type: ignore[union-attr]
    for path in paths:
        wf = json.loads(path.read_text(encoding="utf-8"))
        family = template_family(wf)
        assert family is not None, path
        if family.name == "flux":
            assert validate_prompt(wf, SCHEMAS).ok, path
        else:
            problems = preflight(wf, SCHEMAS)
            assert problems and {(p.class_type, p.type) for p in problems} == {
                (family.models_class, "value_not_in_list")}, path
            assert {p.input for p in problems} <= set(family.model_files), path
        total, loops = training_steps(wf, SCHEMAS)
        assert total == sum(loops), path


@pytest.mark.parametrize("images", [8, 43, 100])
def test_preflight_is_clean_on_the_template_and_every_patched_output(template: dict[str, Any], images: int) -> None:
    from lorawf.comfy.preflight import preflight

    assert preflight(template, SCHEMAS) == []
    patched = patch_workflow(template, plan_training(images, PlanOverrides(network_dim=32)),
                             PatchOptions(token="ink", dataset_path="/data/ink"), SCHEMAS).workflow
    assert preflight(patched, SCHEMAS) == []
