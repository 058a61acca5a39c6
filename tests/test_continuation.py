"""The next segment of a run that stopped at a checkpoint, built from the run's recorded workflow. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import SchemaSet, bundled_object_info, bundled_schemas, parse_object_info
from lorawf.errors import InputError
from lorawf.training.families import FAMILIES
from lorawf.training.plan import plan_training
from lorawf.workflow.build import build_workflow
from lorawf.workflow.continuation import (
    EXACT,
    WEIGHTS,
    block_end_steps,
    build_continuation,
    continuation_modes,
)
from lorawf.workflow.patch import PatchOptions, training_steps
from lorawf.workflow.templates import bundled_template_path

SCHEMAS = bundled_schemas()
OUT = "/srv/comfy/output/lorawf/ink-43img"


def recorded(images: int = 43) -> dict[str, Any]:
    options = PatchOptions("ink", "/srv/comfy/input/ink", OUT, "ink-43img", ())
    return dict(build_workflow(images, options).patch.workflow)


def of_class(workflow: dict[str, Any], cls: str) -> list[str]:
    return [nid for nid, node in workflow.items() if node["class_type"] == cls]


def test_the_block_ends_are_the_planned_checkpoints() -> None:
    assert block_end_steps(recorded(), SCHEMAS) == list(plan_training(43).checkpoint_steps)


def test_exact_continuation_after_1500_of_1720_trains_220_steps_with_the_saved_state() -> None:
    state = f"{OUT}/ink-43img_rank16_bf16-step01500-state"
    cont = build_continuation(recorded(), SCHEMAS, from_step=1500, mode=EXACT, source_path=state,
                              output_dir=f"{OUT}/segment-2")
    wf = cont.workflow
    total, loops = training_steps(wf, SCHEMAS)
    assert (total, loops) == (1720, [220])  # the schedule keeps its length; the loop trains what is left
    assert cont.checkpoints == (1720,) and cont.step_offset == 1500
    (resume,) = of_class(wf, "FluxTrainResume")
    assert wf[resume]["inputs"] == {"load_state_path": state, "skip_until_initial_step": True}
    init = of_class(wf, "InitFluxLoRATraining")[0]
    assert wf[init]["inputs"]["resume_args"] == [resume, 0]
    assert wf[init]["inputs"]["output_dir"] == f"{OUT}/segment-2"
    assert all(wf[n]["inputs"]["save_state"] for n in of_class(wf, "FluxTrainSave"))
    assert [p.render("continuation") for p in preflight(wf, SCHEMAS)] == []


def test_weights_only_continuation_starts_from_the_checkpoint_with_a_schedule_over_the_rest() -> None:
    lora = f"{OUT}/ink-43img_rank16_bf16-step00750.safetensors"
    cont = build_continuation(recorded(), SCHEMAS, from_step=750, mode=WEIGHTS, source_path=lora,
                              output_dir=f"{OUT}/segment-2")
    wf = cont.workflow
    total, loops = training_steps(wf, SCHEMAS)
    assert total == 1720 - 750 and loops == [250, 250, 250, 220]
    assert cont.checkpoints == (1000, 1250, 1500, 1720)
    select = of_class(wf, "FluxTrainModelSelect")[0]
    source = wf[select]["inputs"]["lora_path"]
    assert wf[source[0]] == {"inputs": {"value": lora}, "class_type": "PrimitiveString",
                             "_meta": {"title": "LoRA weights of step 750"}}
    assert not of_class(wf, "FluxTrainResume")
    assert any("close to, not the same as" in note for note in cont.notes)
    assert [p.render("continuation") for p in preflight(wf, SCHEMAS)] == []


@pytest.mark.parametrize(("step", "message"), [(1720, "nothing to continue"), (600, "not a checkpoint")])
def test_nothing_to_continue_or_no_such_checkpoint_is_one_clear_error(step: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_continuation(recorded(), SCHEMAS, from_step=step, mode=EXACT, source_path="/x", output_dir="/y")


def test_a_continuation_of_a_continuation_keeps_the_global_steps() -> None:
    first = build_continuation(recorded(100), SCHEMAS, from_step=1000, mode=EXACT, source_path="/s1",
                               output_dir=f"{OUT}/segment-2")
    assert first.checkpoints == (1500, 2000, 2500, 3000, 3500)
    # the second segment's own workflow no longer knows the global steps: the run's record does
    again = build_continuation(recorded(100), SCHEMAS, from_step=2500, mode=EXACT, source_path="/s2",
                               output_dir=f"{OUT}/segment-3")
    assert training_steps(again.workflow, SCHEMAS)[1] == [500, 500] and again.checkpoints == (3000, 3500)


def recorded_of(family: str, images: int = 43) -> dict[str, Any]:
    """A run of ``family`` as lorawf records it: the bundled template of that family, patched."""
    options = PatchOptions("ink", "/srv/comfy/input/ink", OUT, "ink-43img", ())
    return dict(build_workflow(images, options, template_path=bundled_template_path(family)).patch.workflow)


@pytest.mark.parametrize("family", ["sdxl", "sd35"])
def test_a_run_of_another_family_continues_through_its_own_init_and_model_select(family: str) -> None:
    fam = FAMILIES[family]
    state = f"{OUT}/ink-43img_rank16_{fam.save_dtype}-step01500-state"
    wf = build_continuation(recorded_of(family), SCHEMAS, from_step=1500, mode=EXACT, source_path=state,
                            output_dir=f"{OUT}/segment-2").workflow
    assert training_steps(wf, SCHEMAS) == (1720, [220])
    (resume,) = of_class(wf, "FluxTrainResume")
    (init,) = of_class(wf, fam.init_class)
    assert wf[init]["inputs"]["resume_args"] == [resume, 0]
    assert wf[init]["inputs"]["output_dir"] == f"{OUT}/segment-2"
    assert all(wf[n]["inputs"]["save_state"] for n in of_class(wf, "FluxTrainSave"))
    # the bundled snapshot lists no checkpoints: only the model files are left for the server to check
    assert {(p.class_type, p.type) for p in preflight(wf, SCHEMAS)} <= {(fam.models_class, "value_not_in_list")}

    lora = f"{OUT}/ink-43img_rank16_{fam.save_dtype}-step00750.safetensors"
    cont = build_continuation(recorded_of(family), SCHEMAS, from_step=750, mode=WEIGHTS, source_path=lora,
                              output_dir=f"{OUT}/segment-2")
    wf = cont.workflow
    assert training_steps(wf, SCHEMAS) == (1720 - 750, [250, 250, 250, 220])
    (select,) = of_class(wf, fam.models_class)
    source = wf[select]["inputs"]["lora_path"]
    assert wf[source[0]]["class_type"] == "PrimitiveString" and wf[source[0]]["inputs"] == {"value": lora}
    assert of_class(wf, fam.init_class) and not of_class(wf, "FluxTrainResume")
    assert not of_class(wf, "FluxTrainModelSelect") and not of_class(wf, "InitFluxLoRATraining")
    assert {(p.class_type, p.type) for p in preflight(wf, SCHEMAS)} <= {(fam.models_class, "value_not_in_list")}


def test_every_family_continues_in_both_modes_at_the_bundled_fluxtrainer() -> None:
    assert {name: continuation_modes(fam, SCHEMAS) for name, fam in FAMILIES.items()} == {
        "flux": (EXACT, WEIGHTS), "sdxl": (EXACT, WEIGHTS), "sd35": (EXACT, WEIGHTS)}


def without_input(class_type: str, name: str) -> SchemaSet:
    """The bundled schemas, as a FluxTrainer whose ``class_type`` lacks the input ``name``."""
    info = bundled_object_info()
    for section in ("required", "optional"):
        info[class_type]["input"].get(section, {}).pop(name, None)
    return parse_object_info(info, source="test")


@pytest.mark.parametrize(("family", "mode", "lacking", "message"), [
    ("sdxl", EXACT, ("InitSDXLLoRATraining", "resume_args"),
     ("InitSDXLLoRATraining has no resume_args input, so this SDXL run cannot continue from its saved training "
      "state; continue with --mode weights")),
    ("sd35", WEIGHTS, ("SD3ModelSelect", "lora_path"),
     ("SD3ModelSelect has no lora_path input, so this SD 3.5 run cannot continue from a checkpoint's weights; "
      "continue with --mode exact (runs started with --resumable)")),
])
def test_a_mode_the_familys_nodes_lack_is_refused_in_one_line(family: str, mode: str, lacking: tuple[str, str],
                                                              message: str) -> None:
    schemas = without_input(*lacking)
    assert continuation_modes(FAMILIES[family], schemas) == tuple(m for m in (EXACT, WEIGHTS) if m != mode)
    with pytest.raises(InputError) as refused:
        build_continuation(recorded_of(family), schemas, from_step=750, mode=mode, source_path="/s",
                           output_dir="/y")
    assert str(refused.value) == message
    other = WEIGHTS if mode == EXACT else EXACT  # the other mode still works
    assert build_continuation(recorded_of(family), schemas, from_step=750, mode=other, source_path="/s",
                              output_dir="/y").mode == other
