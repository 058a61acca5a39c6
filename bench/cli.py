"""Command line of the benchmark: choose cases, run them, print the table, write the JSON results."""

from __future__ import annotations

import argparse
import compileall
import importlib
import json
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.harness import ROOT, SCHEMA, CaseResult, Context, Skip, format_case, machine

#: Case modules in the order they run; each has NAME, TITLE and run(ctx) -> CaseResult.
CASES = ("startup", "patch", "submit", "events", "end", "upload", "download", "outputs", "longrun", "sweep")
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def case_module(name: str) -> ModuleType:
    """The module of case ``name`` (``bench.case_<name>``)."""
    return importlib.import_module(f"bench.case_{name}")


def run_case(name: str, ctx: Context) -> CaseResult:
    """Run one case; a :class:`Skip` becomes a skipped result, any other exception an error result."""
    module = case_module(name)
    start = time.perf_counter()
    try:
        result: CaseResult = module.run(ctx)
    except Skip as exc:
        result = CaseResult(name, module.TITLE).skip(str(exc))
    except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others' numbers
        result = CaseResult(name, module.TITLE, status="error", reason=f"{type(exc).__name__}: {exc}")
        if ctx.verbose:
            traceback.print_exc()
    result.seconds = time.perf_counter() - start
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default: bench/results.json)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="samples per measurement (default 7, or 3 with --quick)")
    parser.add_argument("--only", action="append", choices=CASES, metavar="CASE",
                        help=f"run only this case (repeatable): {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (64 MiB download, fewer events)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing cases")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 when every case ran (a missed target is a result, not a failure)."""
    args = parse_args(argv)
    if args.list:
        for name in CASES:
            print(f"{name:<10} {case_module(name).TITLE}")
        return 0
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    if repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return 2
    names = [n for n in CASES if not args.only or n in args.only]
    info = machine()
    print(f"lorawf bench: {info['nproc']} CPUs, {info['cpu_model']}, Python {info['python']}, "
          f"repeat={repeat}{', quick' if args.quick else ''}", flush=True)
    results: dict[str, CaseResult] = {}
    # As installing a wheel does: with PYTHONDONTWRITEBYTECODE set (as on this machine) a checkout would
    # otherwise compile every lorawf module from source at every process start the cases measure.
    compileall.compile_dir(str(ROOT / "lorawf"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="lorawf-bench-") as tmp:
        ctx = Context(repeat=repeat, quick=args.quick, workdir=Path(tmp), verbose=args.verbose)
        for name in names:
            print(f"-- running {name} ...", file=sys.stderr, flush=True)
            results[name] = run_case(name, ctx)
            print(format_case(results[name]), flush=True)
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"repeat": repeat, "quick": args.quick, "only": names},
        "cases": {name: r.to_dict() for name, r in results.items()},
        "summary": summary(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    s = document["summary"]
    print(f"\n{s['passed']} targets passed, {s['missed']} missed; cases: {s['ok']} ok, {s['skipped']} skipped, "
          f"{s['error']} error. Results: {args.out}")
    return 1 if s["error"] else 0


def summary(results: dict[str, CaseResult]) -> dict[str, int]:
    """Counts of targets passed/missed and cases ok/skipped/error."""
    targets = [t for r in results.values() for t in r.targets]
    statuses = [r.status for r in results.values()]
    return {
        "passed": sum(t.passed for t in targets), "missed": sum(not t.passed for t in targets),
        "ok": statuses.count("ok"), "skipped": statuses.count("skipped"), "error": statuses.count("error"),
    }
