"""The template corpus (fixtures/templates): every shape users export, with nodes of other packs, patched for
15, 43 and 100 images and checked against all the schemas: loops sum to the plan, a checkpoint at every K and
at the end, every link resolves, no placeholder left, every foreign node intact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.graph import is_link
from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import SchemaSet, bundled_object_info, bundled_schemas, parse_object_info
from lorawf.training.plan import plan_training
from lorawf.workflow.patch import PLACEHOLDER, PatchOptions, patch_workflow, training_steps

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "fixtures" / "templates"
FOREIGN = REPO / "fixtures" / "object_info" / "foreign"
NAMES = sorted(p.name for p in TEMPLATES.glob("*.json"))
Workflow = dict[str, Any]


def foreign_object_info() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(FOREIGN.glob("*.json")):
        merged.update(json.loads(path.read_text()))
    return merged


@lru_cache(maxsize=1)
def all_schemas() -> SchemaSet:
    return bundled_schemas().merged(parse_object_info(foreign_object_info(), "foreign packs"))


def load(name: str) -> Workflow:
    data: Workflow = json.loads((TEMPLATES / name).read_text())
    return data


def test_the_corpus_covers_the_shapes_and_three_other_packs() -> None:
    assert len(NAMES) >= 6
    classes = {node["class_type"] for name in NAMES for node in load(name).values()}
    foreign = set(foreign_object_info())
    assert {"Display Any (rgthree)", "StringConstantMultiline", "ShowText|pysssss"} <= classes & foreign
    assert "FluxTrainAndValidateLoop" in classes
    loops = [sum(n["class_type"] == "FluxTrainLoop" for n in load(name).values()) for name in NAMES]
    assert 1 in loops and max(loops) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_every_template_is_valid_before_patching(name: str) -> None:
    assert [p.render(name) for p in preflight(load(name), all_schemas())] == []


def output_count(schemas: SchemaSet, workflow: Workflow, node: str) -> int:
    cls = workflow[node]["class_type"]
    return len(schemas[cls].output_types) if cls in schemas else 0


@pytest.mark.parametrize("images", [15, 43, 100])
@pytest.mark.parametrize("name", NAMES)
def test_every_template_patches_exactly(name: str, images: int) -> None:
    template = load(name)
    plan = plan_training(images)
    result = patch_workflow(template, plan, PatchOptions(token="inkwash"), all_schemas())
    out = result.workflow
    schemas = all_schemas()
    # the loops train exactly the plan, one checkpoint per step of the schedule
    total, loops = training_steps(out, schemas)
    assert (total, loops) == (plan.max_train_steps, list(plan.loop_steps))
    saves = [n for n, node in out.items() if node["class_type"] == "FluxTrainSave"]
    assert len(saves) == len(plan.checkpoint_steps)
    assert [out[n]["_meta"]["title"] for n in saves] == [f"Save LoRA checkpoint @ step {s}"
                                                          for s in plan.checkpoint_steps]
    # every link points to an existing node and one of its outputs
    for nid, node in out.items():
        for input_name, value in node["inputs"].items():
            if is_link(value):
                assert value[0] in out, f"{name}: node {nid}.{input_name} -> missing {value[0]}"
                assert int(value[1]) < output_count(schemas, out, value[0]), f"{name}: node {nid}.{input_name}"
    assert PLACEHOLDER not in json.dumps(out)
    # the server would accept it: nothing but what it lets through silently
    assert [p.render(name) for p in preflight(out, schemas)] == []
    assert not [n for n in out.values() if re.search(r"@ \d+ @ step", n.get("_meta", {}).get("title", ""))]
    # every node of another pack is there as it was (but for the placeholder): once, or, when it shows what
    # a checkpoint block produced, once in every generated block
    foreign = set(foreign_object_info())

    def literals(node: Any) -> dict[str, Any]:
        return {k: v for k, v in node["inputs"].items() if not is_link(v)}

    for nid, node in template.items():
        if node["class_type"] not in foreign:
            continue
        kept = json.loads(json.dumps(node).replace(PLACEHOLDER, "inkwash"))
        if nid in out:
            assert out[nid]["class_type"] == kept["class_type"] and literals(out[nid]) == literals(kept)
            continue
        copies = [n for i, n in out.items() if i not in template and n["class_type"] == kept["class_type"]
                  and literals(n) == literals(kept)]
        assert len(copies) == len(plan.checkpoint_steps), f"{name}: node {nid} ({kept['class_type']})"


def test_the_headless_single_loop_template_trains_1720_steps_for_43_images() -> None:
    template = load("headless_single_loop.json")
    result = patch_workflow(template, plan_training(43), PatchOptions(token="inkwash"), all_schemas())
    out = result.workflow
    assert training_steps(out, all_schemas())[1] == [250] * 6 + [220]
    assert out["88"] == template["88"]  # rgthree's epoch display, untouched
    assert "inkwash" in out["146"]["inputs"]["string"] and "inkwash" in out["146"]["_meta"]["title"]
    add = next(node for node in out.values() if node["class_type"] == "TrainDatasetAdd")
    assert add["inputs"]["class_tokens"] == "inkwash"
    assert any("no FluxTrainValidate" in note for note in result.notes)


def test_bundled_schemas_alone_patch_it_and_name_what_they_did_not_check() -> None:
    result = patch_workflow(load("headless_single_loop.json"), plan_training(43), PatchOptions(token="inkwash"),
                            bundled_schemas())
    assert sorted(result.unchecked) == [
        'node 146 StringConstantMultiline "Validation prompts (\'|\'-separated; inkwash becomes the trigger token)"',
        'node 88 Display Any (rgthree) "Number of epochs"']


def test_the_and_validate_loop_template_is_rewritten_and_says_so() -> None:
    result = patch_workflow(load("train_and_validate_loop.json"), plan_training(43), PatchOptions(token="ink"),
                            all_schemas())
    assert not any(n["class_type"] == "FluxTrainAndValidateLoop" for n in result.workflow.values())
    assert any("rewritten into FluxTrainLoop -> FluxTrainSave -> FluxTrainValidate" in n for n in result.notes)


def test_a_server_with_those_packs_accepts_the_patched_template(comfy_server_factory: Any, tmp_path: Path) -> None:
    server = comfy_server_factory(object_info={**bundled_object_info(), **foreign_object_info()})
    result = patch_workflow(load("headless_single_loop.json"), plan_training(43), PatchOptions(token="inkwash"),
                            all_schemas())
    path = tmp_path / "patched.json"
    path.write_text(json.dumps(result.workflow))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    proc = subprocess.run([sys.executable, "-c", "from lorawf.cli import main; main()", "validate", str(path),
                           "--server", server.url], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_patch_names_the_unchecked_nodes_until_their_schemas_are_given(tmp_path: Path) -> None:
    snapshot = tmp_path / "foreign.json"
    snapshot.write_text(json.dumps(foreign_object_info()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    base = [sys.executable, "-c", "from lorawf.cli import main; main()", "patch", "--images", "43", "--token",
            "inkwash", "--template", str(TEMPLATES / "headless_single_loop.json"), "-o", str(tmp_path / "out.json")]
    bare = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert bare.returncode == 0, bare.stderr
    assert 'not checked (no node schema; pass --object-info FILE or --server URL): node 146' in bare.stderr
    assert "no FluxTrainValidate" in bare.stderr
    checked = subprocess.run([*base, "--object-info", str(snapshot)], capture_output=True, text=True, timeout=60,
                             env=env, check=False)
    assert checked.returncode == 0, checked.stderr
    assert "not checked" not in checked.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert training_steps(out, all_schemas())[1] == [250] * 6 + [220]
