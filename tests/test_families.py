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
