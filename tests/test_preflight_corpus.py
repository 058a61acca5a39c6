"""Conformance corpus: small broken workflows with the problem types lorawf must report.

Each ``tests/preflight_corpus/*.json`` holds ``workflow``, ``expected`` (problem types, as a
multiset), ``server`` (what the validate_prompt port says: ``ok`` and ``error_type``; ``ok: null``
with ``error_type: "server_crash"`` for an HTTP 500) and, where a recorded real-server answer covers
the case, ``recorded`` naming it; then the port's answer must equal the recording.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.preflight import EXTRA_TYPES, preflight
from lorawf.comfy.schema import bundled_schemas
from lorawf.comfy.validate import ServerCrash, validate_prompt

HERE = Path(__file__).resolve().parent
CORPUS = sorted((HERE / "preflight_corpus").glob("*.json"))
TRANSCRIPTS = HERE.parent / "fixtures" / "transcripts"
SCHEMAS = bundled_schemas()
SERVER_TYPES = {
    "invalid_prompt", "prompt_no_outputs", "required_input_missing", "bad_linked_input", "return_type_mismatch",
    "exception_during_inner_validation", "invalid_input_type", "value_smaller_than_min", "value_bigger_than_max",
    "value_not_in_list", "custom_validation_failed", "exception_during_validation",
}


def _case(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_corpus_has_at_least_40_broken_workflows() -> None:
    broken = [p for p in CORPUS if _case(p)["expected"]]
    assert len(broken) >= 40
    kinds = {t for p in CORPUS for t in _case(p)["expected"]}
    assert SERVER_TYPES <= kinds, SERVER_TYPES - kinds
    assert set(EXTRA_TYPES) <= kinds


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_preflight_reports_exactly_the_expected_types(path: Path) -> None:
    case = _case(path)
    problems = preflight(case["workflow"], SCHEMAS)
    assert Counter(p.type for p in problems) == Counter(case["expected"]), [p.render() for p in problems]
    for problem in problems:
        line = problem.render(path.name)
        assert "\n" not in line and line.startswith(path.name)
        if problem.node_id is not None and problem.type not in ("invalid_prompt", "dependency_cycle"):
            assert problem.fix, line


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_server_verdict_matches(path: Path) -> None:
    case = _case(path)
    expected = case["server"]
    if expected["error_type"] == "server_crash":
        with pytest.raises(ServerCrash):
            validate_prompt(case["workflow"], SCHEMAS)
        return
    verdict = validate_prompt(case["workflow"], SCHEMAS)
    assert verdict.ok is expected["ok"]
    assert (verdict.error or {}).get("type") == expected["error_type"]
    server_side = [t for t in case["expected"] if t in SERVER_TYPES]
    if verdict.error is None or verdict.error["type"] == "prompt_outputs_failed_validation":
        reported = [e["type"] for entry in verdict.node_errors.values() for e in entry["errors"]]
        assert Counter(reported) == Counter(server_side)


def _recorded(ref: str) -> tuple[int, dict[str, Any]]:
    name, _, key = ref.partition("#")
    data = json.loads((TRANSCRIPTS / name).read_text(encoding="utf-8"))
    if name == "history_list.json":
        (entry,) = data[key]["body"].values()
        return 200, {"outputs_to_execute": entry["prompt"][4]}
    record = data[key] if key else data
    return record["status"], record["body"]


RECORDED = [p for p in CORPUS if "recorded" in _case(p)]


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_cases_match_the_real_server(path: Path) -> None:
    case = _case(path)
    status, body = _recorded(case["recorded"])
    verdict = validate_prompt(case["workflow"], SCHEMAS)
    assert verdict.ok is (status == 200)
    if status == 200:
        assert verdict.outputs_to_execute == body["outputs_to_execute"]
        return
    got = json.loads(json.dumps(verdict.response_body()))
    for entry in [*got["node_errors"].values(), *body["node_errors"].values()]:
        for error in entry["errors"]:
            error["extra_info"].pop("traceback", None)  # names this module's file instead of execution.py
    assert got == body
    first_server_type = body["error"]["type"]
    if first_server_type == "prompt_outputs_failed_validation":
        node_types = {e["type"] for entry in body["node_errors"].values() for e in entry["errors"]}
        assert node_types <= set(case["expected"])
    else:
        assert first_server_type in case["expected"]


def test_recorded_cases_are_present() -> None:
    refs = {_case(p)["recorded"] for p in RECORDED}
    assert "fluxtrainer_invalid_model_response.json" in refs
    assert {f"invalid_prompt_response.json#{k}" for k in (
        "unknown_class_type", "value_above_max", "missing_required_input", "no_output_node", "bad_link_target")} <= refs
