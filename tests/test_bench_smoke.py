"""Smoke test of the benchmark harness: ``python -m bench --quick --only patch`` runs and writes its JSON.

No wall-time assertion: the numbers are the benchmark's business, this only checks that it runs and that the
results file has the documented shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_patch_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "patch", "--repeat", "1", "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["schema"] == "lorawf.bench/1"
    assert {"nproc", "cpu_model", "python"} <= set(data["machine"])
    assert data["settings"] == {"repeat": 1, "quick": True, "only": ["patch"]}
    assert list(data["cases"]) == ["patch"]
    case = data["cases"]["patch"]
    assert case["status"] == "ok", case["reason"]
    metric = case["metrics"]["template patch+dumps"]
    assert {"unit", "median", "min", "max", "q1", "q3", "n", "samples"} <= set(metric)
    assert metric["unit"] == "s" and metric["n"] == 1 and metric["median"] > 0
    assert any(name.startswith("synthetic ") for name in case["metrics"])
    for name in ("template_patch_ms", "growth_exponent", "per_node_ratio"):
        target = case["targets"][name]
        assert {"value", "op", "limit", "passed", "margin"} <= set(target)
        assert isinstance(target["passed"], bool)
    assert {"passed", "missed", "ok", "skipped", "error"} <= set(data["summary"])
    assert "[PASS]" in proc.stdout or "[MISS]" in proc.stdout
