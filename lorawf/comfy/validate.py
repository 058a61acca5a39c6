"""A pure port of ComfyUI 0.3.64's ``execution.validate_prompt`` (what ``POST /prompt`` checks).

Given an API-format prompt and the server's node schemas (``GET /object_info``), it returns the
same verdict the server would: the ``error`` and ``node_errors`` bodies of a 400, or the list of
outputs to execute (with possibly non-empty ``node_errors``) of a 200.

Faithfulness notes (everything else follows the server line by line):

* The server iterates Python ``set`` objects (the output nodes, a node's declared inputs), whose
  order changes from process to process. This port uses the prompt's key order for outputs and the
  declared order (required, then optional) for inputs, so its answers are deterministic. Only the
  order of list items (``dependent_outputs``, errors within one node, ``outputs_to_execute``) can
  differ from a given server process; the content cannot.
* Tracebacks in ``extra_info.traceback`` point at this module, not at ``/srv/comfy/execution.py``.
* Custom ``VALIDATE_INPUTS`` hooks are Python code on the server and do not appear in
  ``/object_info``. The hooks of the core nodes that have one and that matter before a run
  (``LoadImage``-style image loaders) are reproduced in :data:`CUSTOM_VALIDATORS`; nodes of other
  packs are assumed to have none.
* Where the real server would crash with an unhandled exception (HTTP 500, e.g. a prompt that is
  not an object), :class:`ServerCrash` is raised instead of returning a verdict.
* ``no_prompt`` (a POST body without ``prompt``) is decided by the HTTP handler, not here.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lorawf.comfy.schema import InputSpec, NodeSchema, SchemaSet

__all__ = [
    "CUSTOM_VALIDATORS",
    "PromptVerdict",
    "ServerCrash",
    "input_config",
    "server_input_type",
    "validate_node_input",
    "validate_prompt",
]

ANY_TYPE = "*"
COMBO_TYPE = "COMBO"
LONG_LIST = 20  # the server prints "(list of length N)" and drops input_config above this many options


class ServerCrash(Exception):
    """The real server would raise an unhandled exception here and answer HTTP 500."""


@dataclass
class PromptVerdict:
    """What ``POST /prompt`` decides for one prompt.

    ``ok`` False means HTTP 400 with body ``{"error": error, "node_errors": node_errors}``; ``ok``
    True means HTTP 200 with ``{"prompt_id", "number", "node_errors"}`` and only
    ``outputs_to_execute`` queued. ``prompt`` is the graph as the server would queue it (literal
    INT/FLOAT/STRING/BOOLEAN values coerced, ``__value__`` wrappers unwrapped); ``None`` when the
    structural checks failed before any input was looked at.
    """

    ok: bool
    error: dict[str, Any] | None
    outputs_to_execute: list[str]
    node_errors: dict[str, dict[str, Any]]
    prompt: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def response_body(self) -> dict[str, Any]:
        """The 400 body ``{"error", "node_errors"}`` (for a 200 the server adds prompt_id and number)."""
        return {"error": self.error, "node_errors": self.node_errors}


# --- custom validation hooks of core nodes -------------------------------------------------------

CustomValidator = Callable[[NodeSchema, Mapping[str, Any]], "bool | str"]


def _annotated_image_exists(schema: NodeSchema, inputs: Mapping[str, Any]) -> bool | str:
    """``LoadImage.VALIDATE_INPUTS``: the file must exist in the input folder (= in the combo list)."""
    image = inputs.get("image")
    spec = schema.input("image")
    name = image if isinstance(image, str) else None
    if name is not None:
        for suffix in (" [input]", " [output]", " [temp]"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
    choices = spec.choices if spec is not None and spec.choices is not None else ()
    if name is None or name not in choices:
        return f"Invalid image file: {image}"
    return True


CUSTOM_VALIDATORS: dict[str, tuple[tuple[str, ...], CustomValidator]] = {
    # class_type: (argument names of VALIDATE_INPUTS, hook)
    "LoadImage": (("image",), _annotated_image_exists),
    "LoadImageMask": (("image",), _annotated_image_exists),
}


# --- helpers mirroring comfy_execution/validation.py and execution.get_input_info ---------------


def validate_node_input(received_type: Any, input_type: Any, strict: bool = False) -> bool:
    """Port of ``comfy_execution.validation.validate_node_input``: may an output feed an input?

    Equal types match; ``*`` on either side matches anything; otherwise the comma-separated type
    lists must overlap (or, with ``strict``, the received types must all be accepted).
    """
    if received_type == input_type:
        return True
    if received_type == ANY_TYPE or input_type == ANY_TYPE:
        return True
    if isinstance(received_type, list) and input_type == COMBO_TYPE:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    accepted = {t.strip() for t in input_type.split(",")}
    if ANY_TYPE in received or ANY_TYPE in accepted:
        return True
    if strict:
        return received.issubset(accepted)
    return len(received & accepted) > 0


def server_input_type(spec: InputSpec) -> Any:
    """The ``input_type`` the server sees: a type name, or the list of options for a legacy combo."""
    if spec.type == COMBO_TYPE:
        declared = spec.options.get("options")
        if isinstance(declared, (list, tuple)) and tuple(declared) == spec.choices:
            return COMBO_TYPE  # V3 combo: ["COMBO", {"options": [...]}]
        return list(spec.choices or ())
    return spec.type


def input_config(spec: InputSpec) -> list[Any]:
    """``extra_info.input_config`` of an error: ``[input_type, options]`` as the server sends it."""
    return [server_input_type(spec), copy.deepcopy(dict(spec.options))]


def _full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def _exception_info(ex: BaseException) -> tuple[str, list[str]]:
    return _full_type_name(type(ex)), traceback.format_tb(ex.__traceback__)


# --- the port ------------------------------------------------------------------------------------

Validated = dict[Any, tuple[bool, list[dict[str, Any]], Any]]


def _validate_inputs(
    prompt: dict[Any, Any], item: Any, validated: Validated, schemas: SchemaSet, visiting: list[Any]
) -> tuple[bool, list[dict[str, Any]], Any]:
    """Port of ``execution.validate_inputs``: validate one node and, recursively, what feeds it."""
    unique_id = item
    if unique_id in validated:
        return validated[unique_id]
    if unique_id in visiting:
        # The server recurses around a cycle until Python's recursion limit; stop at once instead.
        raise RecursionError("maximum recursion depth exceeded")

    inputs = prompt[unique_id]["inputs"]
    class_type = prompt[unique_id]["class_type"]
    schema = schemas[class_type]

    errors: list[dict[str, Any]] = []
    valid = True

    hook = CUSTOM_VALIDATORS.get(class_type)
    validate_function_inputs: tuple[str, ...] = hook[0] if hook else ()

    for x, spec in schema.inputs.items():
        input_type = server_input_type(spec)
        extra_info = spec.options
        if x not in inputs:
            if spec.required:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": f"{x}",
                        "extra_info": {"input_name": x},
                    }
                )
            continue

        val = inputs[x]
        info = input_config(spec)
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                    }
                )
                continue

            o_id = val[0]
            o_class_type = prompt[o_id]["class_type"]
            r = tuple(schemas[o_class_type].output_types)
            received_type = r[val[1]]
            if not validate_node_input(received_type, input_type):
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "received_type": received_type,
                            "linked_node": val,
                        },
                    }
                )
                continue
            try:
                visiting.append(unique_id)
                try:
                    inner = _validate_inputs(prompt, o_id, validated, schemas, visiting)
                finally:
                    visiting.pop()
                if inner[0] is False:
                    valid = False
                    continue
            except Exception as ex:  # noqa: BLE001 - the server catches everything here too
                valid = False
                exception_type, tb = _exception_info(ex)
                reasons = [
                    {
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(ex),
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "exception_message": str(ex),
                            "exception_type": exception_type,
                            "traceback": tb,
                            "linked_node": val,
                        },
                    }
                ]
                validated[o_id] = (False, reasons, o_id)
                continue
        else:
            try:
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                    inputs[x] = val
                if input_type == "INT":
                    val = int(val)
                    inputs[x] = val
                if input_type == "FLOAT":
                    val = float(val)
                    inputs[x] = val
                if input_type == "STRING":
                    val = str(val)
                    inputs[x] = val
                if input_type == "BOOLEAN":
                    val = bool(val)
                    inputs[x] = val
            except Exception as ex:  # noqa: BLE001
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {input_type} value",
                        "details": f"{x}, {val}, {ex}",
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "received_value": val,
                            "exception_message": str(ex),
                        },
                    }
                )
                continue

            if x not in validate_function_inputs:
                if "min" in extra_info and val < extra_info["min"]:
                    errors.append(
                        {
                            "type": "value_smaller_than_min",
                            "message": "Value {} smaller than min of {}".format(val, extra_info["min"]),
                            "details": f"{x}",
                            "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                        }
                    )
                    continue
                if "max" in extra_info and val > extra_info["max"]:
                    errors.append(
                        {
                            "type": "value_bigger_than_max",
                            "message": "Value {} bigger than max of {}".format(val, extra_info["max"]),
                            "details": f"{x}",
                            "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                        }
                    )
                    continue

                if isinstance(input_type, list) or input_type == COMBO_TYPE:
                    combo_options = extra_info.get("options", []) if input_type == COMBO_TYPE else input_type
                    if val not in combo_options:
                        config: Any = info
                        if len(combo_options) > LONG_LIST:
                            list_info = f"(list of length {len(combo_options)})"
                            config = None
                        else:
                            list_info = str(list(combo_options))
                        errors.append(
                            {
                                "type": "value_not_in_list",
                                "message": "Value not in list",
                                "details": f"{x}: '{val}' not in {list_info}",
                                "extra_info": {"input_name": x, "input_config": config, "received_value": val},
                            }
                        )
                        continue

    if hook is not None and all(x in inputs and not isinstance(inputs[x], list) for x in hook[0]):
        arg_names, function = hook
        result = function(schema, inputs)
        for arg in arg_names:
            if result is not True:
                details = arg if result is False else f"{arg} - {result}"
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": details,
                        "extra_info": {"input_name": arg},
                    }
                )

    if len(errors) > 0 or valid is not True:
        ret = (False, errors, unique_id)
    else:
        ret = (True, [], unique_id)
    validated[unique_id] = ret
    return ret


def _find_outputs(prompt: Any, schemas: SchemaSet, targets: list[str] | None) -> tuple[list[Any], dict[str, Any] | None]:
    """Step A: structural checks in key order; returns the output node ids or the first error."""
    if not isinstance(prompt, dict):
        raise ServerCrash(f"prompt is a {type(prompt).__name__}, not an object of nodes")
    outputs: list[Any] = []
    try:
        for x in prompt:
            if "class_type" not in prompt[x]:
                return [], {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                }
            class_type = prompt[x]["class_type"]
            schema = schemas.get(class_type)
            if schema is None:
                return [], {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {class_type} does not exist.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                }
            if schema.output_node is True and (targets is None or x in targets):
                outputs.append(x)
    except TypeError as ex:  # e.g. a node that is a number, or an unhashable class_type
        raise ServerCrash(f"node {x!r}: {ex}") from None
    if not outputs:
        return [], {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}
    return outputs, None


def validate_prompt(
    prompt: Any, schemas: SchemaSet, partial_execution_targets: list[str] | None = None
) -> PromptVerdict:
    """Judge ``prompt`` exactly as ComfyUI 0.3.64's ``POST /prompt`` would (see the module notes).

    ``prompt`` is the API-format graph (the POST body's ``prompt``); it is not modified.
    ``partial_execution_targets`` limits the outputs validated and queued, as the POST field does.
    Raises :class:`ServerCrash` where the real server would answer HTTP 500.
    """
    outputs, structural_error = _find_outputs(prompt, schemas, partial_execution_targets)
    if structural_error is not None:
        return PromptVerdict(False, structural_error, [], {})

    work = copy.deepcopy(prompt)
    good_outputs: list[Any] = []
    errors: list[tuple[Any, list[dict[str, Any]]]] = []
    node_errors: dict[str, dict[str, Any]] = {}
    validated: Validated = {}
    for o in outputs:
        valid = False
        reasons: list[dict[str, Any]] = []
        try:
            m = _validate_inputs(work, o, validated, schemas, [])
            valid = m[0]
            reasons = m[1]
        except Exception as ex:  # noqa: BLE001 - mirrors the server
            valid = False
            exception_type, tb = _exception_info(ex)
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {"exception_type": exception_type, "traceback": tb},
                }
            ]
            validated[o] = (False, reasons, o)

        if valid is True:
            good_outputs.append(o)
        else:
            errors.append((o, reasons))
            for node_id, result in validated.items():
                if result[0] is not True and len(result[1]) > 0:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": result[1],
                            "dependent_outputs": [],
                            "class_type": work[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(o)

    if len(good_outputs) == 0:
        lines = [f"{error['message']}: {error['details']}" for _, reasons in errors for error in reasons]
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "\n".join(lines),
            "extra_info": {},
        }
        return PromptVerdict(False, error, [], node_errors, work)
    return PromptVerdict(True, None, good_outputs, node_errors, work)
