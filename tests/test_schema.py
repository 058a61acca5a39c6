"""Node schemas parsed from /object_info: every input form the real server uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorawf.comfy.schema import bundled_schemas, load_object_info_file, parse_object_info
from lorawf.errors import InputError

NATIVE_TRAINING = {"TrainLoraNode", "SaveLoRANode", "LoraModelLoader", "LoadImageTextSetFromFolderNode", "LossGraphNode"}
CORE_SAMPLING = {"CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader",
                 "VAEEncode", "VAEDecode", "CLIPTextEncode", "KSampler", "EmptyLatentImage", "EmptySD3LatentImage",
                 "FluxGuidance", "ModelSamplingSD3", "ImageBatch"}


def test_bundled_snapshot_has_every_fluxtrainer_node_and_the_core_subset() -> None:
    schemas = bundled_schemas()
    core = {"PrimitiveString", "PrimitiveStringMultiline", "PrimitiveInt", "PrimitiveFloat", "StringReplace",
            "StringConcatenate", "SaveImage", "PreviewImage", "LoadImage", "EmptyImage", "ImageInvert", "PreviewAny",
            "AcceptSlowSteps", "AcceptSaveText", "AcceptFail"}
    assert len([c for c in schemas if c not in core | NATIVE_TRAINING | CORE_SAMPLING]) == 32
    assert NATIVE_TRAINING | CORE_SAMPLING <= set(schemas)  # the native trainer's nodes (lorawf/data/object_info/native.json)
    train = schemas["TrainLoraNode"]
    assert train.inputs["rank"].maximum == 128 and train.inputs["existing_lora"].choices == ("[None]",)
    assert train.output_names == ("model_with_lora", "lora", "loss", "steps")
    init = schemas["InitFluxLoRATraining"]
    assert init.inputs["max_train_steps"].minimum == 1 and init.inputs["max_train_steps"].maximum == 100000
    assert init.inputs["cache_latents"].choices == ("disk", "memory", "disabled")  # legacy combo list
    assert not init.inputs["flux_models"].is_widget  # a link-only socket
    assert init.inputs["additional_args"].required is False
    assert init.hidden == ("prompt", "extra_pnginfo")
    assert schemas["FluxTrainEnd"].output_node and schemas["FluxTrainEnd"].output_names[2] == "lora_path"
    assert not schemas["FluxTrainModelSelect"].inputs["lora_path"].is_widget  # forceInput
    assert "use_focus " in schemas["OptimizerConfigProdigyPlusScheduleFree"].inputs  # the trailing space is kept


def test_v3_combo_and_describe_range() -> None:
    schemas = parse_object_info({"N": {"input": {"required": {
        "mode": ["COMBO", {"options": ["a", "b"]}],
        "n": ["INT", {"min": 1, "max": 5}],
        "x": ["FLOAT", {"min": 0.5}],
        "files": [[]],
    }}, "output": ["STRING"], "output_name": ["text"]}})
    node = schemas["N"]
    assert node.inputs["mode"].choices == ("a", "b")
    assert node.inputs["n"].describe_range() == "1..5"
    assert node.inputs["x"].describe_range() == ">= 0.5"
    assert "empty" in node.inputs["files"].describe_range()


def test_bad_snapshots_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "oi.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_object_info_file(bad)
    bad.write_text(json.dumps({"N": {"input": {"required": {"x": "INT"}}}}))
    with pytest.raises(InputError, match="node 'N'"):
        load_object_info_file(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_object_info_file(tmp_path / "missing.json")
