"""A workflow lorawf patches loads in the real ComfyUI web UI as-is ("bring your own template").

The fake server (tests/comfy_server, with ``frontend_dir=``) serves the real built frontend of
``comfyui-frontend-package==1.27.10`` (the version ComfyUI 0.3.64 requires) at ``/`` and its API at ``/``
and ``/api/``, as ComfyUI's server.py does. Headless Chromium (Debian's ``chromium``, driven by Playwright)
opens it; the test loads lorawf's patched API JSON with the frontend's own loader ``app.loadApiJson`` and
re-exports it with ``app.graphToPrompt()``: every node id, class_type and input value or link must come
back unchanged. Skips when Chromium, playwright or the frontend package is missing.

The browser reaches nothing but the test server: every request to another origin is aborted, and host
names other than 127.0.0.1 do not resolve (the frontend asks api.comfy.org for release notes).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lorawf.comfy.schema import bundled_object_info
from lorawf.training.dataset import scan_dataset
from lorawf.workflow.build import build_workflow
from lorawf.workflow.patch import PatchOptions
from tests.comfy_server.plugin import ComfyServer, start_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "fixtures" / "datasets" / "ink_wash"
FRONTEND_VERSION = "1.27.10"
READY_TIMEOUT_MS = 120_000

# Inputs the frontend adds to its prompt by itself. Only this one, and only if the server does not declare it:
# extensions/core/previewAny.ts gives every PreviewAny node a read-only "preview" text widget and marks it
# `widget.serialize = false`, which keeps it out of the saved workflow but not out of graphToPrompt (that
# checks `widget.options.serialize`), so the UI queues every PreviewAny with "preview": "" (the server ignores
# inputs its node does not declare).
FRONTEND_ADDED_INPUTS: dict[tuple[str, str], Any] = {("PreviewAny", "preview"): ""}

# What real ComfyUI 0.3.64 also answers 404 to on a fresh install whose optional comfyui-workflow-templates
# package is absent (as here): no user.css yet, no saved workflows, subgraphs or template settings, no
# core templates index.
EXPECTED_404 = (
    "/user.css",
    "/api/userdata/user.css",
    "/api/userdata?dir=workflows&",
    "/api/userdata?dir=subgraphs%2F&",
    "/api/userdata/comfy.templates.json",
    "/templates/index.json",
)

READY_JS = """(types) => {
    const app = window.app
    if (!app || !app.graph || !window.LiteGraph) return false
    // the previous (here: the blank) workflow is restored after app.setup; load ours only after that
    if (!app.extensionManager?.workflow?.activeWorkflow) return false
    return types.every((t) => t in window.LiteGraph.registered_node_types)
}"""

ROUNDTRIP_JS = """async ([apiJson, fileName]) => {
    const app = window.app
    // the same check loadApiJson makes before it shows the missing-nodes dialog and returns
    const missing = Object.values(apiJson)
        .map((n) => n.class_type)
        .filter((t) => !window.LiteGraph.registered_node_types[t])
    if (missing.length) return { missing, nodes: 0, output: {} }
    app.loadApiJson(apiJson, fileName)
    const prompt = await app.graphToPrompt()
    return { missing, nodes: app.graph.nodes.length, output: prompt.output }
}"""


def chromium_path() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def frontend_web_root() -> Path:
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or spec.origin is None:
        pytest.skip(
            "comfyui-frontend-package is not installed"
            f" (pip install comfyui-frontend-package=={FRONTEND_VERSION})"
        )
    root = Path(spec.origin).parent / "static"  # the package's __init__.py sits beside its web root
    if not (root / "index.html").is_file():
        pytest.skip(f"comfyui-frontend-package has no built web root at {root}")
    return root


@dataclass
class WebUI:
    """The running frontend: a ready page on the fake server, and what the page saw since it opened."""

    server: ComfyServer
    page: Page
    responses: list[tuple[int, str, str]] = field(default_factory=list)  # status, method, path+query
    errors: list[str] = field(default_factory=list)  # uncaught page errors, failed requests
    blocked: list[str] = field(default_factory=list)  # requests to other origins, aborted
    startup_seconds: float = 0.0
    version: str = "?"  # the installed comfyui-frontend-package

    def diagnostics(self) -> str:
        lines = [f"page errors / failed requests ({len(self.errors)}):", *self.errors[-20:]]
        lines += [f"blocked requests to other origins: {sorted(set(self.blocked))}"]
        lines += ["fake server log (tail):", self.server.log()[-2000:]]
        return "\n".join(lines)

    def roundtrip(self, workflow: dict[str, Any], file_name: str) -> dict[str, Any]:
        """``app.loadApiJson(workflow)`` then ``app.graphToPrompt().output``."""
        result: dict[str, Any] = self.page.evaluate(ROUNDTRIP_JS, [workflow, file_name])
        assert not result["missing"], (
            f"the web UI does not know the node types {sorted(set(result['missing']))}: "
            f"loadApiJson would refuse the workflow\n{self.diagnostics()}"
        )
        assert result["nodes"] == len(workflow), (
            f"the web UI's graph has {result['nodes']} nodes after loading {len(workflow)}\n"
            + self.diagnostics()
        )
        output: dict[str, Any] = result["output"]
        return output


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    """One fake server with the frontend and one headless Chromium for the module, the app loaded."""
    web_root = frontend_web_root()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): no browser to run the web UI in")
    base = tmp_path_factory.mktemp("webui")
    server = start_server(base / "root", log_dir=base, frontend_dir=web_root)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=executable,
                headless=True,
                args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
            )
            try:
                context = browser.new_context(service_workers="block")
                page = context.new_page()
                ui = WebUI(server, page, version=importlib.metadata.version("comfyui-frontend-package"))

                def only_the_server(route: Any) -> None:
                    url = route.request.url
                    if url == server.url or url.startswith(server.url + "/"):
                        route.continue_()
                    else:
                        ui.blocked.append(url)
                        route.abort()

                context.route("**/*", only_the_server)
                origin = len(server.url)
                responses, errors = ui.responses, ui.errors
                page.on("response", lambda r: responses.append((r.status, r.request.method, r.url[origin:])))
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.on("requestfailed", lambda r: errors.append(f"failed: {r.method} {r.url} {r.failure}"))
                started = time.monotonic()
                page.goto(server.url + "/")
                types = sorted({node["class_type"] for node in patched(None).values()})
                try:
                    page.wait_for_function(READY_JS, arg=types, timeout=READY_TIMEOUT_MS)
                except sync_api.Error as exc:
                    message = f"the web UI did not become ready: {exc}\n{ui.diagnostics()}"
                    raise AssertionError(message) from None
                ui.startup_seconds = time.monotonic() - started
                yield ui
            finally:
                browser.close()
    finally:
        server.stop()


def patched(images: int | None) -> dict[str, Any]:
    """What ``lorawf patch fixtures/datasets/ink_wash --token inkwash [--images N]`` writes."""
    if images is None:
        count, server_path = scan_dataset(DATASET).image_count, str(DATASET.resolve())
    else:
        count, server_path = images, str(DATASET.relative_to(ROOT))  # the CLI passes DATASET as given
    built = build_workflow(count, PatchOptions("inkwash", server_path, None, None, ()))
    workflow: dict[str, Any] = json.loads(built.text)
    return workflow


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values. JSON has one number type and the browser keeps no other: ``16.0`` is re-exported
    as ``16`` (ComfyUI reads either as the same FLOAT or INT). Booleans, strings, nulls and lists must match
    exactly (``True`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)):
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
        return type(a) is type(b) and bool(a == b)
    return isinstance(b, (int, float)) and not isinstance(b, bool) and a == b


def differences(sent: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Every node, class_type and input that did not come back as sent (``_meta`` is not compared)."""
    declared = {
        cls: {*(info["input"].get("required") or {}), *(info["input"].get("optional") or {})}
        for cls, info in bundled_object_info().items()
    }
    out: list[str] = []
    for node_id in sorted(set(sent) - set(got)):
        out.append(f"node {node_id} ({sent[node_id]['class_type']}): missing from the web UI's prompt")
    for node_id in sorted(set(got) - set(sent)):
        out.append(f"node {node_id} ({got[node_id]['class_type']}): added by the web UI")
    for node_id in sorted(set(sent) & set(got)):
        a, b = sent[node_id], got[node_id]
        cls = a["class_type"]
        if b["class_type"] != cls:
            out.append(f"node {node_id}: class_type {cls!r} came back as {b['class_type']!r}")
            continue
        a_in, b_in = a.get("inputs", {}), b.get("inputs", {})
        for name in sorted(set(a_in) | set(b_in)):
            where = f"node {node_id} ({cls}) input {name!r}"
            if name not in b_in:
                out.append(f"{where}: dropped (sent {a_in[name]!r})")
            elif name not in a_in:
                allowed = (cls, name) in FRONTEND_ADDED_INPUTS and name not in declared.get(cls, set())
                if not (allowed and b_in[name] == FRONTEND_ADDED_INPUTS[(cls, name)]):
                    out.append(f"{where}: added by the web UI as {b_in[name]!r}")
            elif not same_json(a_in[name], b_in[name]):
                out.append(f"{where}: sent {a_in[name]!r}, came back as {b_in[name]!r}")
    return out


@pytest.mark.parametrize("images", [None, 43], ids=["ink_wash-scanned", "ink_wash-images43"])
def test_patched_workflow_survives_the_web_ui_unchanged(webui: WebUI, images: int | None) -> None:
    workflow = patched(images)
    assert any(
        node["class_type"] == "TrainDatasetAdd" and "inkwash" in str(node["inputs"].get("class_tokens"))
        for node in workflow.values()
    ), "the patched workflow does not carry the token"
    output = webui.roundtrip(workflow, f"lorawf_{images or 'scanned'}.json")
    diffs = differences(workflow, output)
    assert not diffs, (
        f"the ComfyUI frontend {webui.version} changed lorawf's workflow ({len(diffs)} differences):\n"
        + "\n".join(diffs)
    )


def family_workflow(model: str) -> dict[str, Any]:
    """``lorawf patch --images 43 --token inkwash --model MODEL`` (the family's bundled template)."""
    built = build_workflow(43, PatchOptions("inkwash", "datasets/inkwash", None, None, ()), model=model)
    workflow: dict[str, Any] = json.loads(built.text)
    return workflow


def native_segment(model: str, index: int) -> dict[str, Any]:
    """Segment ``index`` of a ``--trainer native`` run, as lorawf posts it (and keeps it in workflows/)."""
    from lorawf.runs.native import bundled_prompts
    from lorawf.training.plan import plan_training
    from lorawf.workflow.native import NativeRun, segment_workflow

    plan = plan_training(43, model=model, trainer="native")
    run = NativeRun("ink", model, "3d", bundled_prompts(model, "inkwash"))
    existing = None if index == 0 else "lorawf/ink/ink_250_steps_00001_.safetensors"
    return segment_workflow(run, plan, index, existing)


@pytest.mark.parametrize("name", ["sdxl", "sd35", "native-flux", "native-sdxl-2", "native-sd35"])
def test_other_families_and_native_segments_survive_the_web_ui_unchanged(webui: WebUI, name: str) -> None:
    """The SDXL and SD 3.5 workflows and the native trainer's prompts load in the web UI as they are, so a
    user can open any of them there (a value the snapshot server lacks, e.g. an SDXL checkpoint, stays as sent)."""
    if name.startswith("native-"):
        _native, model, *segment = name.split("-")
        workflow = native_segment(model, int(segment[0]) - 1 if segment else 0)
    else:
        workflow = family_workflow(name)
    output = webui.roundtrip(workflow, f"lorawf_{name}.json")
    diffs = differences(workflow, output)
    assert not diffs, (
        f"the ComfyUI frontend {webui.version} changed lorawf's {name} workflow ({len(diffs)} differences):\n"
        + "\n".join(diffs)
    )


def test_the_comparison_sees_what_the_web_ui_drops_or_changes(webui: WebUI) -> None:
    """The round trip is not vacuous: an input no node has is dropped, and the diff names it."""
    workflow = patched(43)
    init = next(i for i, n in workflow.items() if n["class_type"] == "InitFluxLoRATraining")
    workflow[init]["inputs"]["not_an_input"] = 7
    output = webui.roundtrip(workflow, "lorawf_tampered.json")
    assert differences(workflow, output) == [
        f"node {init} (InitFluxLoRATraining) input 'not_an_input': dropped (sent 7)"
    ]
    output[init]["inputs"]["max_train_steps"] += 1
    assert any("'max_train_steps': sent" in d for d in differences(workflow, output))


def test_frontend_startup_requests_get_comfyui_answers(webui: WebUI) -> None:
    """Every request the app made while starting got a ComfyUI answer: no 5xx, only the expected 404s."""
    # the last startup requests come after the app is ready: the model folders (an idle callback) and, on a
    # first run, the templates browser's lists
    late = ("/api/experiment/models", "/api/workflow_templates")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(any(r[2] == p for r in webui.responses) for p in late):
        webui.page.wait_for_timeout(100)
    api = [r for r in webui.responses if r[2].startswith("/api/")]
    for path in late:
        assert any(r[2] == path and r[0] == 200 for r in api), (path, webui.responses)
    assert any(r[2] == "/api/object_info" and r[0] == 200 for r in api), webui.responses
    bad = [r for r in webui.responses if r[0] >= 500]
    unexpected_404 = [r for r in webui.responses if r[0] == 404 and not r[2].startswith(EXPECTED_404)]
    assert not bad and not unexpected_404, (
        f"server errors: {bad}\nunexpected 404s: {unexpected_404}\n{webui.diagnostics()}"
    )
