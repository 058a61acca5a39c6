"""Case 2: patch throughput, in process. The bundled template planned, patched and serialized; then synthetic
workflows of growing size (up to 2,000 nodes) to show that the cost grows linearly with the node count.

The synthetic workflows are the bundled template plus extra nodes of the two kinds a real graph grows by:
half are ``TrainDatasetAdd`` nodes chained into the dataset chain (the patcher finds and rewrites every one of
them), half are ``PreviewAny`` side nodes hanging off ``FluxTrainEnd`` (found, copied, diffed, untouched).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from bench.harness import CaseResult, Context, time_per_call

NAME = "patch"
TITLE = "patch throughput: bundled template and synthetic workflows up to 2,000 nodes"
TOKEN = "inkwash"
IMAGES = 43


def synthetic_workflow(template: dict[str, Any], nodes: int) -> dict[str, Any]:
    """The template grown to ``nodes`` nodes (see the module docstring); ids start at 20000."""
    workflow = copy.deepcopy(template)
    extra = max(0, nodes - len(workflow))
    init = next(nid for nid, n in workflow.items() if n["class_type"] == "InitFluxLoRATraining")
    end = next(nid for nid, n in workflow.items() if n["class_type"] == "FluxTrainEnd")
    first_add = workflow[init]["inputs"]["dataset"][0]
    adds = extra // 2
    previous = first_add
    for i in range(adds):
        nid = str(20000 + i)
        node = copy.deepcopy(workflow[first_add])
        node["inputs"]["dataset_config"] = [previous, 0]
        node["_meta"] = {"title": f"Dataset part {i + 2}"}
        workflow[nid] = node
        previous = nid
    workflow[init]["inputs"]["dataset"] = [previous, 0]
    for i in range(extra - adds):
        workflow[str(20000 + adds + i)] = {
            "inputs": {"source": [end, 2]}, "class_type": "PreviewAny", "_meta": {"title": f"Preview {i}"},
        }
    return workflow


def loglog_slope(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) against log(size): 1 is linear, 2 quadratic."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    den = sum((x - mx) ** 2 for x in xs)
    return num / den


def run(ctx: Context) -> CaseResult:
    """Time the patcher on the bundled template and on synthetic workflows."""
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.training.plan import plan_training
    from lorawf.workflow.build import build_workflow, load_template
    from lorawf.workflow.io import dumps_workflow
    from lorawf.workflow.patch import PatchOptions, patch_workflow

    result = CaseResult(NAME, TITLE)
    _, template = load_template()
    schemas = bundled_schemas()
    plan = plan_training(IMAGES)
    options = PatchOptions(TOKEN, "/data/inkwash", "/out", None, ())
    min_seconds = 0.05 if ctx.quick else 0.3

    def patch_and_dump(wf: dict[str, Any] = template) -> str:
        return dumps_workflow(patch_workflow(wf, plan, options, schemas).workflow)

    def build_and_dump() -> str:
        return build_workflow(IMAGES, options).text

    patched = patch_workflow(template, plan, options, schemas).workflow

    def dump_only() -> str:
        return dumps_workflow(patched)

    ctx.log("patch: bundled template")
    patch_and_dump()  # warm caches (schemas, regex, imports)
    build_and_dump()
    samples: dict[str, list[float]] = {"patch+dumps": [], "build+dumps": [], "dumps": []}
    for _ in range(ctx.repeat):
        samples["patch+dumps"].append(time_per_call(patch_and_dump, min_seconds))
        samples["build+dumps"].append(time_per_call(build_and_dump, min_seconds))
        samples["dumps"].append(time_per_call(dump_only, min_seconds))
    tpl = result.metric("template patch+dumps", "s", samples["patch+dumps"],
                        "patch_workflow + dumps_workflow of the in-memory bundled template")
    result.metric("template build+dumps", "s", samples["build+dumps"],
                  "build_workflow (read template file, plan, patch) + serialize")
    result.metric("template dumps only", "s", samples["dumps"], "dumps_workflow of the patched template")
    result.metric("template workflows/s", "wf/s", [1 / s for s in samples["patch+dumps"]])
    result.info["template_nodes"] = len(template)
    result.info["template_bytes"] = len(patch_and_dump())

    sizes = [125, 250, 500] if ctx.quick else [250, 500, 1000, 2000]
    medians: list[float] = []
    for size in sizes:
        ctx.log(f"patch: synthetic {size} nodes")
        workflow = synthetic_workflow(template, size)
        patch_and_dump(workflow)

        def call(wf: dict[str, Any] = workflow) -> str:
            return patch_and_dump(wf)

        times = [time_per_call(call, min_seconds) for _ in range(ctx.repeat)]
        m = result.metric(f"synthetic {size} nodes patch+dumps", "s", times)
        result.metric(f"synthetic {size} nodes per node", "s", [t / size for t in times])
        medians.append(m.median)
    slope = loglog_slope(sizes, medians)
    per_node = [m / s for m, s in zip(medians, sizes)]
    result.info["sizes"] = sizes
    result.info["loglog_slope"] = slope

    result.target("template_patch_ms", "bundled template patched + serialized", tpl.median, "<=", 0.005, "s")
    result.target("growth_exponent", f"growth exponent of time vs nodes ({sizes[0]}..{sizes[-1]})",
                  slope, "<=", 1.15, "")
    result.target("per_node_ratio", f"time per node at {sizes[-1]} / at {sizes[0]} nodes",
                  per_node[-1] / per_node[0], "<=", 1.5, "x")
    return result
