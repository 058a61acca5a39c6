"""The validate_prompt port must answer exactly as the recorded ComfyUI 0.3.64 server did."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.schema import bundled_schemas
from lorawf.comfy.validate import ServerCrash, validate_node_input, validate_prompt

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "transcripts"
SCHEMAS = bundled_schemas()


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _wire(value: Any) -> Any:
    """What the server would put on the wire (tuples become lists, etc.)."""
    return json.loads(json.dumps(value))


def _strip_tracebacks(body: dict[str, Any]) -> dict[str, Any]:
    """Tracebacks name the validating module's file and line: the only thing that differs by nature."""
    body = copy.deepcopy(body)
    for entry in body["node_errors"].values():
        for error in entry["errors"]:
            tb = error["extra_info"].pop("traceback", None)
            if tb is not None:
                assert isinstance(tb, list) and tb and all(isinstance(line, str) for line in tb)
    return body


RECORDED_400 = [name for name, case in _load("invalid_prompt_response.json").items() if "prompt" in case["request_body"]]


@pytest.mark.parametrize("case_name", RECORDED_400)
def test_recorded_rejections_are_reproduced(case_name: str) -> None:
    case = _load("invalid_prompt_response.json")[case_name]
    assert case["status"] == 400
    verdict = validate_prompt(case["request_body"]["prompt"], SCHEMAS)
    assert verdict.ok is False
    assert _strip_tracebacks(_wire(verdict.response_body())) == _strip_tracebacks(case["body"])


def test_recorded_cases_cover_the_expected_types() -> None:
    types = {
        name: _load("invalid_prompt_response.json")[name]["body"]["error"]["type"] for name in RECORDED_400
    }
    assert set(types.values()) == {"invalid_prompt", "prompt_outputs_failed_validation", "prompt_no_outputs"}


def test_recorded_fluxtrainer_invalid_model() -> None:
    case = _load("fluxtrainer_invalid_model_response.json")
    verdict = validate_prompt(case["request_body"], SCHEMAS)
    assert verdict.ok is False
    assert _wire(verdict.response_body()) == case["body"]


def test_recorded_accepted_prompts_are_accepted() -> None:
    for name in ("transcript_success.json", "transcript_error.json", "transcript_interrupt.json",
                 "transcript_image.json", "transcript_fluxtrainer.json"):
        transcript = _load(name)
        verdict = validate_prompt(transcript["prompt"], SCHEMAS)
        assert transcript["post_response"]["status"] == 200, name
        assert verdict.ok, (name, verdict.error, verdict.node_errors)
        assert verdict.node_errors == transcript["post_response"]["body"]["node_errors"] == {}


def test_fluxtrainer_graph_queues_its_single_output() -> None:
    verdict = validate_prompt(_load("fluxtrainer_prompt_api.json"), SCHEMAS)
    assert verdict.ok and verdict.outputs_to_execute == ["7"]


def test_recorded_partial_success_queues_only_the_valid_output() -> None:
    """history_list.json: output 4 fed by a bad model select was dropped, output 2 was queued (200)."""
    history = _load("history_list.json")["max_items=1&offset=0"]["body"]
    (entry,) = history.values()
    prompt, queued_outputs = entry["prompt"][2], entry["prompt"][4]
    verdict = validate_prompt(prompt, SCHEMAS)
    assert verdict.ok is True
    assert verdict.outputs_to_execute == queued_outputs == ["2"]
    assert set(verdict.node_errors) == {"3"}
    err = verdict.node_errors["3"]
    assert err["class_type"] == "FluxTrainModelSelect"
    assert err["dependent_outputs"] == ["4"]
    assert [e["type"] for e in err["errors"]] == ["value_not_in_list"]
    assert err["errors"][0]["details"] == (
        "transformer: 'no-such-model.safetensors' not in ['flux1-dev.safetensors']"
    )


def test_the_given_prompt_is_not_modified_but_the_queued_copy_is_coerced() -> None:
    prompt = {
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": "7", "delay": 1, "text": 5}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": {"__value__": "p"}}},
    }
    before = copy.deepcopy(prompt)
    verdict = validate_prompt(prompt, SCHEMAS)
    assert verdict.ok
    assert prompt == before
    assert verdict.prompt is not None
    assert verdict.prompt["1"]["inputs"] == {"steps": 7, "delay": 1.0, "text": "5"}
    assert verdict.prompt["2"]["inputs"]["filename_prefix"] == "p"


def _chain(steps: Any = 5, delay: Any = 0.05, **extra: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": "AcceptSlowSteps", "inputs": {"steps": steps, "delay": delay, **extra}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
    }


def _only_error(verdict: Any, node: str = "1") -> dict[str, Any]:
    assert verdict.ok is False
    (error,) = verdict.node_errors[node]["errors"]
    return error  # type: ignore[no-any-return]


def test_min_uses_server_message_format() -> None:
    error = _only_error(validate_prompt(_chain(delay=-0.5), SCHEMAS))
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == "Value -0.5 smaller than min of 0.0"
    assert error["details"] == "delay"


def test_invalid_int_is_reported_with_the_python_message() -> None:
    error = _only_error(validate_prompt(_chain(steps="many"), SCHEMAS))
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"
    assert error["details"] == "steps, many, invalid literal for int() with base 10: 'many'"
    assert error["extra_info"]["received_value"] == "many"


def test_float_for_int_is_truncated_like_the_server() -> None:
    verdict = validate_prompt(_chain(steps=3.9), SCHEMAS)
    assert verdict.ok and verdict.prompt is not None and verdict.prompt["1"]["inputs"]["steps"] == 3


def test_long_combo_lists_are_summarised() -> None:
    from lorawf.comfy.schema import parse_object_info

    raw = {
        "Pick": {"input": {"required": {"name": [[f"m{i}.safetensors" for i in range(21)]]}},
                 "output": [], "output_node": True},
        "PickShort": {"input": {"required": {"name": [[f"m{i}" for i in range(20)]]}},
                      "output": [], "output_node": True},
    }
    schemas = parse_object_info(raw)
    error = _only_error(validate_prompt({"1": {"class_type": "Pick", "inputs": {"name": "x"}}}, schemas))
    assert error["details"] == "name: 'x' not in (list of length 21)"
    assert error["extra_info"]["input_config"] is None
    error = _only_error(validate_prompt({"1": {"class_type": "PickShort", "inputs": {"name": "x"}}}, schemas))
    assert error["details"].endswith("'m19']")
    assert error["extra_info"]["input_config"][0][0] == "m0"
    verdict = validate_prompt({"1": {"class_type": "PickShort", "inputs": {"name": "x"}}}, schemas)
    assert verdict.error is not None
    assert verdict.error["details"] == f"Value not in list: {error['details']}"


def test_force_input_literal_is_accepted_by_the_server() -> None:
    prompt = {"2": {"class_type": "AcceptSaveText", "inputs": {"text": "literal", "filename_prefix": "x"}}}
    assert validate_prompt(prompt, SCHEMAS).ok


def test_return_type_mismatch() -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
    }
    error = _only_error(validate_prompt(prompt, SCHEMAS), "2")
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "text, received_type(IMAGE) mismatch input_type(STRING)"
    assert error["extra_info"]["linked_node"] == ["1", 0]


def test_any_type_accepts_everything() -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    assert validate_prompt(prompt, SCHEMAS).ok


def test_validate_node_input_rules() -> None:
    assert validate_node_input("IMAGE", "IMAGE")
    assert validate_node_input("*", "LATENT")
    assert validate_node_input("LATENT", "*")
    assert validate_node_input("STRING,INT", "INT")
    assert validate_node_input("STRING", "STRING,INT", strict=True)
    assert not validate_node_input("STRING,INT", "INT", strict=True)
    assert not validate_node_input("IMAGE", "MASK")


def test_slot_out_of_range_is_an_inner_exception_on_the_linked_node_holder() -> None:
    prompt = _chain()
    prompt["2"]["inputs"]["text"] = ["1", 3]
    verdict = validate_prompt(prompt, SCHEMAS)
    error = _only_error(verdict, "2")
    assert error["type"] == "exception_during_validation"
    assert error["details"] == "tuple index out of range"
    assert error["extra_info"]["exception_type"] == "IndexError"
    assert verdict.error is not None
    assert verdict.error["details"] == "Exception when validating node: tuple index out of range"


def test_broken_link_upstream_is_stored_under_the_linked_node() -> None:
    prompt = {
        "1": {"class_type": "AcceptFail", "inputs": {"message": "m", "text": ["99", 0]}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
    }
    verdict = validate_prompt(prompt, SCHEMAS)
    error = _only_error(verdict, "1")
    assert error["type"] == "exception_during_inner_validation"
    assert error["details"] == "'99'"
    assert error["extra_info"]["input_name"] == "text"
    assert error["extra_info"]["linked_node"] == ["1", 0]
    assert verdict.error is not None and verdict.error["details"] == ""


def test_bad_linked_input_length() -> None:
    prompt = _chain()
    prompt["2"]["inputs"]["text"] = ["1", 0, 0]
    error = _only_error(validate_prompt(prompt, SCHEMAS), "2")
    assert error["type"] == "bad_linked_input"
    assert error["extra_info"]["received_value"] == ["1", 0, 0]


def test_cycle_does_not_hang_and_leaves_no_node_errors() -> None:
    """0.3.64 recurses around a cycle until RecursionError; every frame then overwrites the stored
    exception with its own error-less failure, so the answer is a 400 with empty node_errors."""
    prompt = {
        "1": {"class_type": "AcceptFail", "inputs": {"message": "m", "text": ["3", 0]}},
        "3": {"class_type": "AcceptFail", "inputs": {"message": "m", "text": ["1", 0]}},
        "2": {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
    }
    verdict = validate_prompt(prompt, SCHEMAS)
    assert verdict.ok is False
    assert verdict.node_errors == {}
    assert verdict.error == {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    }


def test_missing_class_type_and_partial_targets() -> None:
    verdict = validate_prompt({"5": {"inputs": {}}}, SCHEMAS)
    assert verdict.error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because a node is missing the class_type property.",
        "details": "Node ID '#5'",
        "extra_info": {},
    }
    prompt = _chain()
    verdict = validate_prompt(prompt, SCHEMAS, partial_execution_targets=["1"])
    assert verdict.error is not None and verdict.error["type"] == "prompt_no_outputs"
    assert validate_prompt(prompt, SCHEMAS, partial_execution_targets=["2"]).outputs_to_execute == ["2"]


def test_upstream_failure_shared_by_two_outputs_lists_both() -> None:
    prompt = _chain(steps=0)
    prompt["3"] = {"class_type": "AcceptSaveText", "inputs": {"text": ["1", 0], "filename_prefix": "y"}}
    verdict = validate_prompt(prompt, SCHEMAS)
    assert verdict.ok is False
    assert verdict.node_errors["1"]["dependent_outputs"] == ["2", "3"]


def test_load_image_custom_validation_replaces_the_combo_check() -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    error = _only_error(validate_prompt(prompt, SCHEMAS))
    assert error == {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": "image - Invalid image file: nope.png",
        "extra_info": {"input_name": "image"},
    }
    prompt["1"]["inputs"]["image"] = "example.png [input]"
    assert validate_prompt(prompt, SCHEMAS).ok


@pytest.mark.parametrize("prompt", [[1, 2], {"1": 5}, {"1": {"class_type": ["x"], "inputs": {}}}])
def test_server_crashes_are_raised(prompt: Any) -> None:
    with pytest.raises(ServerCrash):
        validate_prompt(prompt, SCHEMAS)
