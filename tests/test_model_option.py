"""`--model flux|sdxl|sd35` on plan, patch, regen and the sweep file: a family is a choice, not a fork."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorawf.cli import main
from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import bundled_schemas
from lorawf.training.families import FAMILIES
from lorawf.training.plan import plan_training
from lorawf.workflow.patch import training_steps
from lorawf.workflow.templates import TEMPLATE_NAMES, bundled_template_path

ROOT = Path(__file__).parent.parent


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def of_class(workflow: dict[str, dict[str, object]], cls: str) -> list[str]:
    return sorted(nid for nid, node in workflow.items() if node["class_type"] == cls)


@pytest.mark.parametrize("model", ["sdxl", "sd35"])
@pytest.mark.parametrize("images", [15, 43, 100])
def test_patch_model_writes_the_familys_exact_chain(tmp_path: Path, model: str, images: int) -> None:
    family = FAMILIES[model]
    out = tmp_path / "wf.json"
    code, _out, err = run("patch", "--images", str(images), "--token", "inkwash", "--model", model, "-o", str(out))
    assert code == 0, err
    wf = json.loads(out.read_text())
    plan = plan_training(images, model=model)
    total, loops = training_steps(wf, bundled_schemas())
    assert total == plan.max_train_steps and loops == list(plan.loop_steps)
    saves = of_class(wf, "FluxTrainSave")
    validates = of_class(wf, family.validate_class)
    assert len(saves) == len(plan.checkpoint_steps) == len(validates)  # a checkpoint at every K and at the end
    assert of_class(wf, family.init_class) == ["105"] and of_class(wf, family.models_class) == ["101"]
    assert "InitFluxLoRATraining" not in {n["class_type"] for n in wf.values()}
    init = wf["105"]["inputs"]
    assert (init["learning_rate"], init["network_dim"], init["network_alpha"]) == (1e-4, 16, 16.0)
    # only the server's file lists are left: the recorded server had no SDXL/SD3 checkpoint and no clip_g
    problems = preflight(wf, bundled_schemas())
    assert {(p.class_type, p.type) for p in problems} == {(family.models_class, "value_not_in_list")}
    assert "inkwash" in json.dumps(wf) and "STYLE_TOKEN" not in json.dumps(wf)


def test_every_family_has_a_bundled_template_in_the_wheel() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    for model, name in TEMPLATE_NAMES.items():
        assert bundled_template_path(model).is_file()
        assert f'"workflows/{name}" = "lorawf/data/workflows/{name}"' in pyproject
        wf = json.loads(bundled_template_path(model).read_text())
        assert all(node["_meta"]["title"] for node in wf.values())  # titled, found by role
        assert FAMILIES[model].init_class in {n["class_type"] for n in wf.values()}


def test_the_template_and_the_model_must_agree() -> None:
    code, _out, err = run("patch", "--images", "43", "--token", "t", "--model", "sdxl",
                          "--template", str(bundled_template_path("flux")))
    assert code == 3
    assert "the template trains Flux.1 but the plan is for SDXL: pass --model flux" in err
    # no --model: the template says which family
    code, out, err = run("patch", "--images", "43", "--token", "t", "--template", str(bundled_template_path("sd35")))
    assert code == 0, err
    assert "InitSD3LoRATraining" in out


def test_plan_says_each_familys_differences() -> None:
    rows = {}
    for model in ("flux", "sdxl", "sd35"):
        code, out, _ = run("plan", "--images", "43", "--model", model)
        assert code == 0
        rows[model] = out
        assert "max_train_steps    1720" in out and "learning_rate      0.0001" in out  # the seed's rules
    assert "FluxTrainModelSelect -> InitFluxLoRATraining" in rows["flux"] and "512 x 512" in rows["flux"]
    assert "<name>_rank16_fp16-step00250.safetensors" in rows["sdxl"] and "SDXLTrainValidate" in rows["sdxl"]
    assert "SD3ModelSelect -> InitSD3LoRATraining" in rows["sd35"] and "(FluxTrainValidate)" in rows["sd35"]
    code, out, _ = run("plan", "--images", "43", "--model", "sdxl", "--json")
    assert json.loads(out)["model"] == "sdxl"
    code, _out, err = run("plan", "--images", "43", "--model", "sd15")
    assert code == 2 and "'sd15' is not one of 'flux', 'sdxl', 'sd35'" in err


def test_regen_presets_take_a_model(tmp_path: Path) -> None:
    presets = tmp_path / "presets.toml"
    presets.write_text('[[preset]]\nname = "x"\noutput = "x.json"\nmodel = "sdxl"\ntoken = "ink"\nimages = 43\n')
    code, _out, err = run("regen", "--presets", str(presets))
    assert code == 0, err
    assert json.loads((tmp_path / "x.json").read_text())["105"]["class_type"] == "InitSDXLLoRATraining"
    presets.write_text('[[preset]]\nname = "x"\noutput = "x.json"\nmodel = "sd3"\ntoken = "ink"\nimages = 43\n')
    code, _out, err = run("regen", "--presets", str(presets))
    assert code == 3 and "preset x: model = \"sd3\": expected one of 'flux', 'sdxl', 'sd35'" in err


def test_the_committed_presets_cover_every_family() -> None:
    text = (ROOT / "workflows" / "presets.toml").read_text()
    assert 'model = "sdxl"' in text and 'model = "sd35"' in text


def _sweep(tmp_path: Path, extra: str) -> Path:
    data = tmp_path / "ink"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = tmp_path / "sweep.toml"
    path.write_text(f'{extra}\n[[dataset]]\nfolder = "ink"\ntoken = "ink"\n[grid]\ndim = [8, 16]\n')
    return path


def test_a_sweep_file_takes_a_model(tmp_path: Path) -> None:
    path = _sweep(tmp_path, 'model = "sd35"')
    code, out, err = run("sweep", "plan", str(path), "--offline", "--json")
    assert code == 0, err
    assert {r["plan"]["model"] for r in json.loads(out)["runs"]} == {"sd35"}


@pytest.mark.parametrize(("extra", "message"), [
    ('model = "sd15"', "model: \"sd15\" is not a model family; choose one of 'flux', 'sdxl', 'sd35'"),
    (f'model = "sdxl"\ntemplate = "{bundled_template_path("flux")}"', "trains Flux.1 (model = 'flux'); drop one"),
])
def test_a_sweep_files_model_is_checked(tmp_path: Path, extra: str, message: str) -> None:
    code, _out, err = run("sweep", "plan", str(_sweep(tmp_path, extra)), "--offline")
    assert code == 3 and message in err
