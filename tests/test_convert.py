"""UI-format → API-format conversion, on the two upstream FluxTrainer examples and on small graphs.

The upstream examples use KJNodes and rgthree nodes, which the bundled snapshot does not have. The
tests convert them twice: as they are (the unknown nodes are kept and validation names each one), and
with ``drop_unknown=True`` (what a headless server without those packs needs: display-only side
branches go, KJNodes string constants are inlined), which must then validate clean apart from model
file names. ``fix_stale=True`` applies the documented stale-value fixes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import bundled_schemas, parse_object_info
from lorawf.errors import WorkflowFormatError
from lorawf.workflow.convert import CONTROL_VALUES, convert_ui, ui_to_api
from lorawf.workflow.io import as_api_workflow, load_workflow

UPSTREAM = Path(__file__).resolve().parent.parent / "fixtures" / "upstream-workflows"
SCHEMAS = bundled_schemas()
FLUX_MODELS = {"transformer": "flux1-dev.safetensors", "vae": "ae.safetensors", "clip_l": "clip_l.safetensors",
               "t5": "t5xxl_fp16.safetensors"}
EXAMPLES = ["flux_lora_train_example01.json", "sdxl_train_example_01.json"]


def _ui(name: str) -> dict[str, Any]:
    return json.loads((UPSTREAM / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _ui_nodes(name: str) -> dict[str, dict[str, Any]]:
    return {str(n["id"]): n for n in _ui(name)["nodes"]}


@pytest.mark.parametrize("name", EXAMPLES)
def test_upstream_example_validates_after_conversion(name: str) -> None:
    api = ui_to_api(_ui(name), SCHEMAS, model_overrides=FLUX_MODELS, fix_stale=True, drop_unknown=True)
    problems = preflight(api, SCHEMAS)
    # model file names aside: the snapshot server has no SDXL checkpoint at all
    rest = [p for p in problems if not (p.type == "value_not_in_list" and p.input == "checkpoint")]
    assert rest == [], [p.render(name) for p in rest]
    if name.startswith("flux"):
        assert problems == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_training_chain_survives_conversion(name: str) -> None:
    api = ui_to_api(_ui(name), SCHEMAS, fix_stale=True, drop_unknown=True)
    loops = {nid: n for nid, n in api.items() if n["class_type"] == "FluxTrainLoop"}
    assert sorted(loops, key=int) == ["4", "44", "59", "64"]
    assert all(n["inputs"]["steps"] == 750 for n in loops.values())
    assert api["133"]["class_type"] == "FluxTrainEnd"
    last_validate = "65" if name.startswith("flux") else "147"
    assert api["133"]["inputs"] == {"save_state": False, "network_trainer": [last_validate, 0]}
    assert api[last_validate]["inputs"]["network_trainer"] == ["134", 0]
    # saves feed validators: Loop -> Save -> Validate -> Loop ...
    assert api["14"]["inputs"]["network_trainer"] == ["4", 0]
    assert api["44"]["inputs"]["network_trainer"][0] in {"8", "141"}


def test_flux_example_values_match_the_fact_sheet() -> None:
    api = ui_to_api(_ui(EXAMPLES[0]), SCHEMAS, drop_unknown=True)
    init = api["107"]["inputs"]
    assert init["max_train_steps"] == 3000
    assert init["output_name"] == "flux_lora_file_name"
    assert init["discrete_flow_shift"] == 3.1582000000000003
    assert init["blocks_to_swap"] is False  # stale value kept as it is without fix_stale
    assert init["gradient_checkpointing"] == "enabled"
    assert init["sample_prompts"].startswith("cute anime girl") and init["sample_prompts"].count("|") == 3
    assert init["dataset"] == ["112", 0] and init["flux_models"] == ["136", 0] and init["optimizer_settings"] == ["95", 0]
    assert api["136"]["inputs"]["t5"] == "t5\\google_t5-v1_1-xxl_encoderonly-fp8_e4m3fn.safetensors"
    settings = api["37"]["inputs"]
    assert settings == {"steps": 20, "width": 1024, "height": 1024, "guidance_scale": 3, "seed": 42, "shift": True,
                        "base_shift": 0.5, "max_shift": 1.15}
    # GetNode 40 -> SetNode 38 -> node 37
    assert api["8"]["inputs"]["validation_settings"] == ["37", 0]
    assert api["95"]["inputs"]["optimizer_type"] == "CAME"
    assert [api[n]["inputs"]["width"] for n in ("109", "111", "112")] == [512, 768, 1024]
    assert api["111"]["inputs"]["dataset_config"] == ["109", 0]
    assert api["107"]["_meta"]["title"] == "Init Flux LoRA Training"  # schema display name (no UI title)
    # muted upload node and notes are gone
    assert "89" not in api and "73" not in api and "113" not in api


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_node_holds_the_ui_values(name: str) -> None:
    """Node by node: the literal inputs, in schema order, are the UI's widget values minus the
    control_after_generate entries and the slots of linked (converted) widgets."""
    ui_nodes = _ui_nodes(name)
    api = ui_to_api(_ui(name), SCHEMAS)
    checked = 0
    for nid, node in api.items():
        schema = SCHEMAS.get(node["class_type"])
        if schema is None:
            continue
        ui = ui_nodes[nid]
        linked = {i["name"] for i in ui.get("inputs", []) if i.get("link") is not None and "widget" in i}
        expected = []
        values = list(ui.get("widgets_values") or [])
        widget_slots = [n for n, s in schema.inputs.items()
                        if s.type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                        and (not s.options.get("forceInput") or any(i.get("name") == n and "widget" in i
                                                                    for i in ui.get("inputs", [])))]
        values = [v for v in values if not (isinstance(v, str) and v in CONTROL_VALUES)]
        for slot_name, value in zip(widget_slots, values):
            if slot_name not in linked:
                expected.append((slot_name, value))
        got = [(k, v) for k, v in node["inputs"].items() if not isinstance(v, list) and k not in linked]
        assert got == expected, nid
        assert node["_meta"]["title"] == (ui.get("title") or schema.display_name)
        checked += 1
    assert checked >= 30


def test_unknown_nodes_are_kept_without_drop_unknown() -> None:
    conversion = convert_ui(_ui(EXAMPLES[0]), SCHEMAS, model_overrides=FLUX_MODELS, fix_stale=True)
    api = conversion.workflow
    assert api["78"]["class_type"] == "AddLabel"
    assert api["135"] == {"inputs": {}, "class_type": "StringConstantMultiline",
                          "_meta": {"title": "StringConstantMultiline"}}
    assert api["107"]["inputs"]["sample_prompts"] == ["135", 0]
    types = {p.type for p in preflight(api, SCHEMAS)}
    assert types == {"invalid_prompt"}
    assert any("widget values cannot be named" in n for n in conversion.notes)


def test_stale_fixes_only_when_asked() -> None:
    plain = convert_ui(_ui(EXAMPLES[1]), SCHEMAS, drop_unknown=True)
    ppsf = plain.workflow["149"]["inputs"]
    assert "use_focus " not in ppsf and ppsf["use_orthograd"] == ""
    assert any("--fix-stale" in n for n in plain.notes)
    fixed = convert_ui(_ui(EXAMPLES[1]), SCHEMAS, drop_unknown=True, fix_stale=True)
    ppsf = fixed.workflow["149"]["inputs"]
    assert ppsf["use_orthograd"] is False and ppsf["use_focus "] is False
    assert ppsf["stochastic_rounding"] is True and ppsf["extra_optimizer_args"] == ""
    assert ppsf["lr"] == 2 and ppsf["prodigy_steps"] == 750
    assert any(n.startswith("stale value fixed: node 149") for n in fixed.notes)
    flux = convert_ui(_ui(EXAMPLES[0]), SCHEMAS, drop_unknown=True, fix_stale=True)
    assert flux.workflow["107"]["inputs"]["blocks_to_swap"] == 0


# --- small synthetic UI graphs ------------------------------------------------------------------

MINI = parse_object_info({
    "Seeded": {"input": {"required": {"seed": ["INT", {"default": 0, "min": 0, "max": 100}],
                                      "label": ["STRING", {"default": ""}]}},
               "output": ["STRING"], "output_node": False, "display_name": "Seeded node"},
    "Sink": {"input": {"required": {"text": ["STRING", {"forceInput": True}]}},
             "output": [], "output_node": True, "display_name": "Sink"},
    "Filter": {"input": {"required": {"text": ["STRING", {"forceInput": True}], "mode": [["a", "b"]]}},
               "output": ["STRING"], "output_node": False},
})


def _node(nid: int, type_: str, widgets: list[Any] | None = None, inputs: list[dict[str, Any]] | None = None,
          outputs: list[dict[str, Any]] | None = None, mode: int = 0, title: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"id": nid, "type": type_, "mode": mode, "inputs": inputs or [], "outputs": outputs or [],
                            "widgets_values": widgets or []}
    if title:
        node["title"] = title
    return node


def _graph(nodes: list[dict[str, Any]], links: list[list[Any]]) -> dict[str, Any]:
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "version": 0.4}


def test_seed_control_value_is_skipped_and_titles_kept() -> None:
    ui = _graph([_node(1, "Seeded", [7, "randomize", "hi"], title="My seed"),
                 _node(2, "Sink", inputs=[{"name": "text", "type": "STRING", "link": 1}]),
                 _node(3, "Note", ["a note"])],
                [[1, 1, 0, 2, 0, "STRING"]])
    api = ui_to_api(ui, MINI)
    assert api == {
        "1": {"inputs": {"seed": 7, "label": "hi"}, "class_type": "Seeded", "_meta": {"title": "My seed"}},
        "2": {"inputs": {"text": ["1", 0]}, "class_type": "Sink", "_meta": {"title": "Sink"}},
    }


def test_reroute_setget_and_primitive_are_resolved() -> None:
    ui = _graph([
        _node(1, "Seeded", [3, "fixed", "x"]),
        _node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}], outputs=[{"name": "", "type": "STRING"}]),
        _node(3, "SetNode", ["txt"], inputs=[{"name": "STRING", "type": "STRING", "link": 2}]),
        _node(4, "GetNode", ["txt"], outputs=[{"name": "STRING", "type": "STRING"}]),
        _node(5, "Sink", inputs=[{"name": "text", "type": "STRING", "link": 3}]),
        _node(6, "PrimitiveNode", ["b"], outputs=[{"name": "COMBO", "type": "COMBO"}]),
        _node(7, "Filter", ["a"], inputs=[{"name": "text", "type": "STRING", "link": 5},
                                          {"name": "mode", "type": "COMBO", "link": 4, "widget": {"name": "mode"}}]),
        _node(8, "Sink", inputs=[{"name": "text", "type": "STRING", "link": 6}]),
    ], [[1, 1, 0, 2, 0, "STRING"], [2, 2, 0, 3, 0, "STRING"], [3, 4, 0, 5, 0, "STRING"],
        [4, 6, 0, 7, 1, "COMBO"], [5, 1, 0, 7, 0, "STRING"], [6, 7, 0, 8, 0, "STRING"]])
    api = ui_to_api(ui, MINI)
    assert set(api) == {"1", "5", "7", "8"}
    assert api["5"]["inputs"] == {"text": ["1", 0]}
    assert api["7"]["inputs"] == {"mode": "b", "text": ["1", 0]}  # the primitive's value wins over the slot
    assert preflight(api, MINI) == []


def test_muted_dropped_and_bypassed_passed_through() -> None:
    ui = _graph([
        _node(1, "Seeded", [3, "fixed", "x"]),
        _node(2, "Filter", ["a"], inputs=[{"name": "text", "type": "STRING", "link": 1}], mode=4),
        _node(3, "Sink", inputs=[{"name": "text", "type": "STRING", "link": 2}]),
        _node(4, "Sink", inputs=[{"name": "text", "type": "STRING", "link": 3}], mode=2),
    ], [[1, 1, 0, 2, 0, "STRING"], [2, 2, 0, 3, 0, "STRING"], [3, 1, 0, 4, 0, "STRING"]])
    conversion = convert_ui(ui, MINI)
    assert set(conversion.workflow) == {"1", "3"}
    assert conversion.workflow["3"]["inputs"] == {"text": ["1", 0]}
    assert sorted(conversion.dropped) == ["2", "4"]


def test_link_from_muted_node_leaves_the_input_missing() -> None:
    ui = _graph([_node(1, "Seeded", [3, "fixed", "x"], mode=2),
                 _node(2, "Sink", inputs=[{"name": "text", "type": "STRING", "link": 1}])],
                [[1, 1, 0, 2, 0, "STRING"]])
    api = ui_to_api(ui, MINI)
    assert api == {"2": {"inputs": {}, "class_type": "Sink", "_meta": {"title": "Sink"}}}
    assert [p.type for p in preflight(api, MINI)] == ["required_input_missing"]


def test_model_override_by_node_and_by_input() -> None:
    ui = _ui(EXAMPLES[0])
    api = ui_to_api(ui, SCHEMAS, model_overrides={"136.t5": "t5xxl_fp16.safetensors"})
    assert api["136"]["inputs"]["t5"] == "t5xxl_fp16.safetensors"
    assert api["136"]["inputs"]["vae"] == "flux_vae.safetensors"


def test_subgraphs_are_refused_clearly() -> None:
    ui = _graph([_node(1, "0f1e-sub")], [])
    ui["definitions"] = {"subgraphs": [{"id": "0f1e-sub"}]}
    with pytest.raises(WorkflowFormatError, match="subgraph"):
        ui_to_api(ui, MINI)


def test_load_workflow_converts_ui_files(tmp_path: Path) -> None:
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(_ui(EXAMPLES[0])), encoding="utf-8")
    api, was_ui = load_workflow(path, SCHEMAS, drop_unknown=True)
    assert was_ui and api["107"]["class_type"] == "InitFluxLoRATraining"
    with pytest.raises(WorkflowFormatError, match="UI-format"):
        as_api_workflow(_ui(EXAMPLES[0]), str(path))
    plain = tmp_path / "api.json"
    plain.write_text(json.dumps(api), encoding="utf-8")
    again, was_ui = load_workflow(plain, SCHEMAS)
    assert not was_ui and again == api


def test_conversion_does_not_modify_its_input() -> None:
    ui = _ui(EXAMPLES[1])
    before = copy.deepcopy(ui)
    convert_ui(ui, SCHEMAS, fix_stale=True, drop_unknown=True, model_overrides=FLUX_MODELS)
    assert ui == before
