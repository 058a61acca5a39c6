"""Preflight rendering, the validate/convert/object-info commands, and the object_info cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lorawf.cli import main
from lorawf.comfy.preflight import Problem, closest_names, preflight, raise_if_problems, render_json
from lorawf.comfy.schema import bundled_object_info, bundled_schemas
from lorawf.errors import ValidationFailed
from lorawf.net import schema_cache
from lorawf.net.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "preflight_corpus"
UPSTREAM = ROOT / "fixtures" / "upstream-workflows"
SCHEMAS = bundled_schemas()


def _workflow(case: str) -> dict[str, Any]:
    return json.loads((CORPUS / f"{case}.json").read_text(encoding="utf-8"))["workflow"]  # type: ignore[no-any-return]


def _write(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(_workflow(case)), encoding="utf-8")
    return path


def test_problem_line_names_file_node_input_value_range_and_fix() -> None:
    (problem,) = preflight(_workflow("recorded_value_above_max"), SCHEMAS)
    line = problem.render("wf.json")
    assert line == ("wf.json: node 1 (AcceptSlowSteps) input 'steps' = 20000: value_bigger_than_max: "
                    "Value 20000 bigger than max of 10000; allowed: 1..10000; fix: set 'steps' to a value "
                    "within 1..10000")


def test_model_name_suggestion_and_title() -> None:
    workflow = _workflow("flux_model_close_name")
    workflow["1"]["_meta"] = {"title": "Models"}
    (problem,) = preflight(workflow, SCHEMAS)
    assert problem.title == "Models" and problem.suggestions == ("flux1-dev.safetensors",)
    assert 'node 1 "Models" (FluxTrainModelSelect)' in problem.render()
    assert "closest: 'flux1-dev.safetensors'" in problem.render()


def test_closest_names_prefers_separator_fix() -> None:
    assert closest_names("t5\\t5xxl_fp16.safetensors", ["t5/t5xxl_fp16.safetensors", "clip_l.safetensors"])[0] == (
        "t5/t5xxl_fp16.safetensors")
    assert closest_names(5, ["a"]) == ()


def test_json_rendering_uses_server_type_names() -> None:
    problems = preflight(_workflow("recorded_missing_required_input"), SCHEMAS)
    data = json.loads(render_json(problems))
    assert data == [{"node_id": "1", "title": None, "class_type": "AcceptSlowSteps", "type": "required_input_missing",
                     "message": "required input is missing", "input": "steps", "value": None,
                     "allowed": "1..10000", "fix": "add 'steps' (default 5)", "suggestions": []}]


def test_raise_if_problems() -> None:
    raise_if_problems(_workflow("clean_flux"), SCHEMAS, "ok.json")
    with pytest.raises(ValidationFailed, match=r"^bad.json: node 1 .* \(and 1 more"):
        raise_if_problems(_workflow("two_errors_one_node"), SCHEMAS, "bad.json")


def test_non_object_workflow_is_a_problem_not_a_crash() -> None:
    (problem,) = preflight([1, 2], SCHEMAS)
    assert isinstance(problem, Problem) and problem.type == "invalid_prompt"


# --- commands -----------------------------------------------------------------------------------


def test_validate_clean_exits_0(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(_write(tmp_path, "clean_flux"))])
    assert result.exit_code == 0, result.output
    assert "ok (7 nodes checked against bundled object_info" in result.output


def test_validate_problems_exit_1_one_line_each(tmp_path: Path) -> None:
    path = _write(tmp_path, "two_errors_one_node")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: node 1 (AcceptSlowSteps)") for line in lines)
    assert "Traceback" not in result.output
    assert "error:" in result.stderr and "2 problem(s)" in result.stderr


def test_validate_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--json", str(_write(tmp_path, "flux_loops_short"))])
    assert result.exit_code == 1
    assert [p["type"] for p in json.loads(result.stdout)] == ["loop_steps_mismatch"]
    clean = CliRunner().invoke(main, ["validate", "--json", str(_write(tmp_path, "clean_accept"))])
    assert clean.exit_code == 0 and json.loads(clean.stdout) == []


def test_validate_ui_file_with_options() -> None:
    path = UPSTREAM / "flux_lora_train_example01.json"
    args = ["validate", str(path), "--drop-unknown", "--fix-stale"]
    for name, value in (("transformer", "flux1-dev.safetensors"), ("vae", "ae.safetensors"),
                        ("t5", "t5xxl_fp16.safetensors")):
        args += ["--set-model", f"{name}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "UI-format workflow, converted" in result.stderr
    plain = CliRunner().invoke(main, ["validate", str(path)])
    assert plain.exit_code == 1 and "does not exist on the server" in plain.stdout


def test_validate_with_object_info_file(tmp_path: Path) -> None:
    info = tmp_path / "oi.json"
    data = bundled_object_info()
    data["FluxTrainModelSelect"]["input"]["required"]["transformer"] = [["other.safetensors"]]
    info.write_text(json.dumps(data), encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "--object-info", str(info), str(_write(tmp_path, "clean_flux"))])
    assert result.exit_code == 1 and "closest: 'other.safetensors'" in result.stdout


def test_usage_and_input_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "clean_flux")
    both = CliRunner().invoke(main, ["validate", str(path), "--server", "http://h:1", "--object-info", "x.json"])
    assert both.exit_code == 2 and "either --server or --object-info" in both.stderr
    missing = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.json")])
    assert missing.exit_code == 3 and "file not found" in missing.stderr
    bad_override = CliRunner().invoke(main, ["validate", str(path), "--set-model", "novalue"])
    assert bad_override.exit_code == 2


def test_convert_writes_file_and_refuses_api_input(tmp_path: Path) -> None:
    out = tmp_path / "api.json"
    result = CliRunner().invoke(main, ["convert", str(UPSTREAM / "sdxl_train_example_01.json"), "-o", str(out),
                                       "--fix-stale", "--drop-unknown"])
    assert result.exit_code == 0, result.output
    api = json.loads(out.read_text(encoding="utf-8"))
    assert api["144"]["class_type"] == "InitSDXLLoRATraining"
    assert "stale value fixed: node 149" in result.stderr
    to_stdout = CliRunner().invoke(main, ["convert", str(UPSTREAM / "sdxl_train_example_01.json")])
    assert json.loads(to_stdout.stdout)["144"]["inputs"]["max_train_steps"] == 3000
    again = CliRunner().invoke(main, ["convert", str(out)])
    assert again.exit_code == 3 and "already API format" in again.stderr


def test_offline_validate_does_not_import_the_network_stack(tmp_path: Path) -> None:
    path = _write(tmp_path, "clean_accept")
    code = ("import sys; from lorawf.cli import main\n"
            f"try:\n    main(['validate', {str(path)!r}])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('httpx', 'websockets', 'lorawf.net.http') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --- object_info cache ----------------------------------------------------------------------------


def test_cache_key_is_per_server_and_version(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    a = schema_cache.cache_path("http://h:8188", "0.3.64", env)
    assert a.parent == tmp_path / "lorawf" / "object_info"
    assert a != schema_cache.cache_path("http://h:8188", "0.3.65", env)
    assert a != schema_cache.cache_path("http://other:8188", "0.3.64", env)
    assert schema_cache.store("http://h:8188", "0.3.64", {"X": {}}, env) == a
    assert schema_cache.load_cached("http://h:8188", "0.3.64", env) == {"X": {}}
    assert schema_cache.store("http://h:8188", "unknown", {"X": {}}, env) is None


def test_server_schemas_fetch_once_then_cache(comfy_server: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    host = comfy_server.url.split("://", 1)[1]
    settings = ServerSettings.resolve(f"http://user:secret@{host}", environ={})

    def asked() -> list[str]:
        return [r.path for r in comfy_server.requests() if r.path in ("/system_stats", "/object_info")]

    comfy_server.clear_requests()
    first = schema_cache.server_schemas(settings)
    second = schema_cache.server_schemas(settings)
    assert asked() == ["/system_stats", "/object_info", "/system_stats"]
    assert set(first) == set(second) >= set(SCHEMAS)  # the test server also lists a few core model loaders
    assert "secret" not in first.source and "0.3.64" in first.source
    cached = list((tmp_path / "lorawf" / "object_info").glob("*.json"))
    assert len(cached) == 1 and "secret" not in cached[0].name
    assert not [p for p in (tmp_path / "lorawf" / "object_info").iterdir() if "secret" in p.name]
    schema_cache.server_schemas(settings, refresh=True)
    assert asked()[-1] == "/object_info"
