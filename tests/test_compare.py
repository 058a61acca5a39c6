"""The comparison page (lorawf.runs.compare, ``lorawf compare``): grids per prompt, the runs table, relative
links, escaping, the PNG per prompt, and the page as a real browser shows it (headless Chromium)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from PIL import Image

from lorawf.cli import main
from lorawf.runs.compare import CELL_WIDTH, load_compare_runs, write_compare_page
from lorawf.runs.record import RunRecord, Timings, scan_files, write_record
from tests.test_webui_roundtrip import chromium_path

PROMPTS = ("inkwash, a heron in reeds", "inkwash, <script>alert(1)</script> mountains\x1b[31m")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def make_run(root: Path, name: str, *, lr: float, dim: int, steps: tuple[int, ...] = (100, 200, 300),
             missing: tuple[int, ...] = (), outcome: str = "success", color: int = 0) -> Path:
    run_dir = root / name
    (run_dir / "validation").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    for step in steps:
        if step in missing:
            continue
        for index in range(len(PROMPTS)):
            Image.new("RGB", (64, 48), (color, step % 256, 40 * index)).save(
                run_dir / "validation" / f"val_step{step:05d}_{index + 1:05d}_.png")
        (run_dir / "checkpoints" / f"{name}_rank{dim}_bf16-step{step:05d}.safetensors").write_bytes(b"x" * step)
    plan = {"images": 43, "learning_rate": lr, "network_dim": dim, "network_alpha": float(dim),
            "max_train_steps": steps[-1], "checkpoint_interval": 100, "checkpoint_steps": list(steps),
            "batch_size": 2, "num_repeats": 1}
    record = RunRecord(name=name, plan=plan, patch=[], template="t.json", server_url="http://gpu:8188",
                       timings=Timings(created=T0, submitted=T0, started=T0, finished=T0 + timedelta(minutes=42)),
                       outcome=outcome, prompts=PROMPTS, error=None if outcome == "success" else "node\x07 error")
    write_record(run_dir, replace_files(record, run_dir))
    return run_dir


def replace_files(record: RunRecord, run_dir: Path) -> RunRecord:
    from dataclasses import replace

    return replace(record, files=tuple(scan_files(run_dir)))


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(str(a["src"]))
        if tag == "a":
            self.hrefs.append(str(a["href"]))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self._row = []
            self.tables[-1].append(self._row)
        if tag in ("td", "th") and self._row is not None:
            self._row.append(tag)


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "sweep"
    return [make_run(root, "ink-lr1e-4-dim16", lr=1e-4, dim=16),
            make_run(root, "ink-lr1e-4-dim32", lr=1e-4, dim=32, color=80),
            make_run(root, "ink-lr4e-4-dim16", lr=4e-4, dim=16, missing=(300,), color=160),
            make_run(root, "ink-lr4e-4-dim32", lr=4e-4, dim=32, outcome="error", missing=(200, 300), color=240)]


def test_the_page_has_a_grid_per_prompt_with_runs_as_rows_and_steps_as_columns(tmp_path: Path,
                                                                                 runs: list[Path]) -> None:
    out = tmp_path / "sweep" / "index.html"
    page = write_compare_page(load_compare_runs(runs), out, title="sweep <ink>")
    text = out.read_text(encoding="utf-8")
    parser = Links()
    parser.feed(text)
    grids = parser.tables[:2]
    for grid in grids:
        assert len(grid) == 1 + 4  # the step header and one row per run
        assert all(len(row) == 1 + 3 for row in grid)  # a label and one cell per step
    assert page.runs == 4 and page.prompts == 2 and page.steps == 3 and page.images == 2 * (3 + 3 + 2 + 1)
    assert len(parser.srcs) == page.images
    # labels show what differs (lr and dim), not what is the same (images, batch)
    assert "lr 4e-4 · dim 32" in text and "img 43" not in text and "batch" not in text.split("<h2>Runs")[0]
    assert "not yet" not in text and "error" in text  # a missing image of an ended run says why
    # escaped: no script tag from a prompt, no control characters
    assert "<script>" not in text and "&lt;script&gt;" in text and "\x1b" not in text and "\x07" not in text
    # every link is relative and points at a file or folder that exists; nothing leaves the folder
    assert "http://" not in text.replace("http://gpu:8188", "") and "https://" not in text
    for link in parser.srcs + parser.hrefs:
        assert not link.startswith("/") and "://" not in link
        assert (out.parent / unquote(link)).exists(), link
    for png in page.pngs:
        with Image.open(png) as image:
            assert image.width > 3 * 100 and image.height > 4 * 100  # 3 step columns, 4 run rows


def test_the_page_is_the_same_bytes_for_the_same_runs(tmp_path: Path, runs: list[Path]) -> None:
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    write_compare_page(load_compare_runs(runs), a, title="t")
    write_compare_page(load_compare_runs(runs), b, title="t")
    assert a.read_text(encoding="utf-8").replace("a-prompt", "b-prompt") == b.read_text(encoding="utf-8")
    assert Path(tmp_path / "a-prompt-1.png").read_bytes() == Path(tmp_path / "b-prompt-1.png").read_bytes()


def test_lorawf_compare_command(tmp_path: Path, runs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compare", *map(str, runs[:2]), "-o", "old-vs-new.html"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "old-vs-new.html").is_file() and (tmp_path / "old-vs-new-prompt-2.png").is_file()
    assert "2 runs, 2 prompts, 3 steps, 12 images" in result.output
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(main, ["compare", str(tmp_path / "empty")])
    assert bad.exit_code == 3 and "not a run folder (no run.json)" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def browser_view(page_path: Path) -> tuple[dict[str, Any], list[str], list[str], Path]:
    """Open the page from disk in headless Chromium: image states, console errors, failed requests, a screenshot."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    errors: list[str] = []
    failed: list[str] = []
    shot = page_path.with_suffix(".screenshot.png")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(page_path.resolve().as_uri())
            page.evaluate("() => Promise.all([...document.images].map(i => { i.loading = 'eager'; "
                          "return i.decode().catch(() => null); }))")
            state = page.evaluate("() => ({count: document.images.length, "
                                  "loaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length})")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return state, errors, failed, shot


def test_the_page_in_a_real_browser_loads_every_image_without_errors(tmp_path: Path, runs: list[Path]) -> None:
    small, large = tmp_path / "sweep" / "two.html", tmp_path / "sweep" / "four.html"
    write_compare_page(load_compare_runs(runs[:2]), small, title="two runs", png=False)
    write_compare_page(load_compare_runs(runs), large, title="four runs", png=False)
    sizes = []
    for path, images in ((small, 12), (large, 18)):
        state, errors, failed, shot = browser_view(path)
        assert state == {"count": images, "loaded": images}
        assert errors == [] and failed == []
        with Image.open(shot) as image:
            assert image.width >= 3 * CELL_WIDTH  # three step columns side by side
            sizes.append(image.height)
    assert sizes[1] > sizes[0] + 2 * 2 * CELL_WIDTH * 0.5  # two more rows in each of the two grids


def test_cells_of_a_run_still_going_say_not_yet(tmp_path: Path) -> None:
    run = make_run(tmp_path, "ink-a", lr=1e-4, dim=16, outcome="pending", missing=(300,))
    other = make_run(tmp_path, "ink-b", lr=4e-4, dim=16)
    text = write_compare_page(load_compare_runs([run, other]), tmp_path / "p.html", title="t", png=False).page \
        .read_text(encoding="utf-8")
    assert len(re.findall(r"not yet", text)) == 2  # step 300 of each prompt


def test_prompts_with_each_runs_own_token_are_matched_by_position() -> None:
    from lorawf.runs.compare import match_prompts

    heads, where = match_prompts([["a heron, inkwash style", "a cat, inkwash style"],
                                  ["a heron, charcoal style", "a cat, charcoal style"], []])
    assert heads == ["a heron, inkwash style | a heron, charcoal style", "a cat, inkwash style | a cat, charcoal style"]
    assert where == [[0, 1], [0, 1], [None, None]]
    heads, where = match_prompts([["a", "b"], ["b"]])  # different lists: by text
    assert heads == ["a", "b"] and where == [[0, 1], [None, 0]]
