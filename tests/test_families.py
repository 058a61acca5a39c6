"""The model families (lorawf/training/families.py) against the node schemas lorawf bundles: every class,
input, type and default named there is what FluxTrainer 639b3e8 declares."""

from __future__ import annotations

from typing import Any

import pytest

from lorawf.comfy.schema import bundled_object_info
from lorawf.training.families import DEFAULT_FAMILY, FAMILIES, ModelFamily, family

SCHEMAS = bundled_object_info()


def inputs(class_type: str) -> dict[str, Any]:
    spec = SCHEMAS[class_type]["input"]
    return {**spec.get("required", {}), **spec.get("optional", {})}


def default(class_type: str, name: str) -> Any:
    return inputs(class_type)[name][1].get("default")


@pytest.mark.parametrize("fam", list(FAMILIES.values()), ids=list(FAMILIES))
def test_a_family_names_only_what_the_schemas_declare(fam: ModelFamily) -> None:
    for class_type in (fam.models_class, fam.init_class, fam.validate_class, fam.validation_settings_class):
        assert class_type in SCHEMAS, class_type
    assert SCHEMAS[fam.models_class]["output"] == [fam.models_output]
    assert inputs(fam.init_class)[fam.models_input][0] == fam.models_output  # the select feeds the Init node
    assert set(fam.model_files) <= set(inputs(fam.models_class))
    assert set(fam.prompt_inputs) <= set(inputs(fam.init_class))
    assert default(fam.init_class, "output_name") == fam.default_output_name
    assert default(fam.init_class, "output_dir") == fam.default_output_dir
    assert SCHEMAS[fam.validation_settings_class]["output"] == ["VALSETTINGS"]
    validate = inputs(fam.validate_class)
    assert validate["network_trainer"][0] == "NETWORKTRAINER" and validate["validation_settings"][0] == "VALSETTINGS"
    assert default(fam.validation_settings_class, "width") == default(fam.validation_settings_class, "height") \
        == fam.validation_size
    for shared in ("FluxTrainLoop", "FluxTrainSave", "FluxTrainEnd"):  # the chain every family reuses
        assert inputs(shared)["network_trainer"][0] == "NETWORKTRAINER"


def test_the_sd3_quirks_are_as_the_source_has_them() -> None:
    assert "training_shift " in inputs("InitSD3LoRATraining")  # with the trailing space
    assert "SD3TrainValidate" not in SCHEMAS  # defined in nodes_sd3.py, never registered
    assert FAMILIES["sd35"].validate_class == "FluxTrainValidate"


def test_flux_is_the_default_and_an_unknown_family_lists_the_choices() -> None:
    assert family(DEFAULT_FAMILY).init_class == "InitFluxLoRATraining"
    with pytest.raises(ValueError, match=r"unknown model family 'sd15': choose one of flux, sdxl, sd35"):
        family("sd15")


def sdxl_example_as_template() -> dict[str, Any]:
    """FluxTrainer's own SDXL example, converted to API format with the bundled schemas, made a template the
    way a user makes one: the optimizer node lorawf plans for (OptimizerConfig) and the STYLE_TOKEN prompts."""
    import json
    from pathlib import Path

    from lorawf.comfy.schema import bundled_schemas
    from lorawf.workflow.convert import ui_to_api

    ui = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "upstream-workflows"
                     / "sdxl_train_example_01.json").read_text(encoding="utf-8"))
    workflow = ui_to_api(ui, bundled_schemas(), fix_stale=True, drop_unknown=True)
    (init,) = [n for n, node in workflow.items() if node["class_type"] == "InitSDXLLoRATraining"]
    optimizer = workflow[init]["inputs"]["optimizer_settings"][0]
    assert workflow[optimizer]["class_type"] == "OptimizerConfigProdigyPlusScheduleFree"  # upstream's choice
    workflow[optimizer] = {"class_type": "OptimizerConfig", "inputs": {
        "optimizer_type": "adamw8bit", "max_grad_norm": 1.0, "lr_scheduler": "constant", "lr_warmup_steps": 0,
        "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0, "min_snr_gamma": 5.0, "extra_optimizer_args": ""}}
    workflow[init]["inputs"]["sample_prompts_pos"] = "STYLE_TOKEN, a misty valley | STYLE_TOKEN, a heron"
    return workflow


def test_the_sdxl_upstream_example_patches_to_the_exact_plan() -> None:
    from lorawf.comfy.preflight import preflight
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.training.plan import plan_training
    from lorawf.workflow.patch import PatchOptions, find_roles, patch_workflow, training_steps

    schemas = bundled_schemas()
    template = sdxl_example_as_template()
    assert find_roles(template, schemas).family is FAMILIES["sdxl"]
    result = patch_workflow(template, plan_training(43, model="sdxl"), PatchOptions(token="inkwash"), schemas)
    out = result.workflow
    assert training_steps(out, schemas)[1] == [250] * 6 + [220]  # 1720 steps, a checkpoint every 250 and at the end
    (init,) = [node for node in out.values() if node["class_type"] == "InitSDXLLoRATraining"]
    assert (init["inputs"]["max_train_steps"], init["inputs"]["learning_rate"], init["inputs"]["network_dim"]) == \
        (1720, 1e-4, 16)
    assert init["inputs"]["sample_prompts_pos"] == "inkwash, a misty valley | inkwash, a heron"
    classes = [node["class_type"] for node in out.values()]
    assert classes.count("FluxTrainSave") == classes.count("SDXLTrainValidate") == 7
    # against the real schemas, only the model file (the bundled snapshot lists no files) is left to set
    assert {(p.class_type, p.type) for p in preflight(out, schemas)} <= {("SDXLModelSelect", "value_not_in_list")}


def test_a_template_without_a_known_training_initialiser_names_all_three() -> None:
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.errors import TemplateError
    from lorawf.workflow.patch import find_roles

    template = sdxl_example_as_template()
    for node in template.values():
        if node["class_type"] == "InitSDXLLoRATraining":
            node["class_type"] = "InitSD15LoRATraining"
    with pytest.raises(TemplateError, match="no InitFluxLoRATraining, InitSDXLLoRATraining or InitSD3LoRATraining node"):
        find_roles(template, bundled_schemas())


def test_the_contact_sheet_reads_an_sdxl_runs_prompts() -> None:
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.runs.sheet import prompts_from_workflow
    from lorawf.training.plan import plan_training
    from lorawf.workflow.patch import PatchOptions, patch_workflow

    out = patch_workflow(sdxl_example_as_template(), plan_training(43, model="sdxl"), PatchOptions(token="inkwash"),
                         bundled_schemas()).workflow
    assert prompts_from_workflow(out) == ["inkwash, a misty valley", "inkwash, a heron"]
