"""Comparing runs on one page: for each validation prompt a grid (runs as rows, checkpoint steps as columns),
and a table of every run's plan, host, duration, outcome and files.

The page is self-contained (inline CSS, no script, no URL outside the folder) and every link is relative, so
it opens from disk, from a copied folder and during a sweep (a cell whose image has not come yet says so
instead of showing a broken image). One PNG per prompt draws the same grid with the contact sheet's renderer.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from lorawf.errors import InputError
from lorawf.fsutil import atomic_write_text, check_write_target
from lorawf.printable import printable
from lorawf.runs.record import SHEET_NAME, RunRecord, read_record
from lorawf.runs.sheet import ValidationImage, build_contact_sheet, collect_validation_images, record_prompts
from lorawf.timefmt import format_duration, iso_utc

#: (plan key, label) of the settings a row label may show, in this order.
SETTINGS = (("images", "img"), ("learning_rate", "lr"), ("network_dim", "dim"), ("network_alpha", "alpha"),
            ("max_train_steps", "steps"), ("checkpoint_interval", "interval"), ("batch_size", "batch"),
            ("num_repeats", "repeats"))
CELL_WIDTH = 192  # px: a grid of 7 checkpoints stays within a laptop screen


@dataclass(frozen=True)
class CompareRun:
    """One run on the page: its folder, record, host and the settings that set it apart."""

    run_dir: Path
    record: RunRecord
    host: str | None
    label: tuple[tuple[str, str], ...]

    @property
    def label_text(self) -> str:
        return " · ".join(f"{k} {v}".strip() for k, v in self.label) or self.record.name


@dataclass(frozen=True)
class ComparePage:
    """What :func:`write_compare_page` wrote."""

    page: Path
    pngs: tuple[Path, ...]
    runs: int
    prompts: int
    steps: int
    images: int


def _format(value: object) -> str:
    if isinstance(value, float):
        from lorawf.training.sweep import format_value

        return format_value("lr", value)
    return str(value)


def differing_settings(records: Sequence[RunRecord]) -> list[list[tuple[str, str]]]:
    """Per record, ``(label, value)`` of the plan settings whose values differ among ``records``.

    What follows from something already shown is left out: the image count, the step count and the interval
    when each dataset (token) has one of them, alpha when it equals dim in every run (the planner's rule)."""
    tokens = [_token(r) for r in records]
    shown: list[tuple[str, str]] = []
    for key, label in SETTINGS:
        values = [repr(r.plan.get(key)) for r in records]
        if len(set(values)) <= 1:
            continue
        if key in ("images", "max_train_steps", "checkpoint_interval") and len(set(tokens)) > 1 and \
                len(set(zip(tokens, values))) == len(set(tokens)):
            continue  # one value per dataset: the dataset says it
        if key == "network_alpha" and all(r.plan.get(key) == r.plan.get("network_dim") for r in records):
            continue
        shown.append((key, label))
    out = []
    for record, token in zip(records, tokens):
        row = [("", token)] if len(set(tokens)) > 1 else []
        row += [(label, _format(record.plan.get(key))) for key, label in shown]
        out.append(row)
    return out


def _token(record: RunRecord) -> str:
    value = record.plan.get("token") or record.plan.get("trigger")
    return str(value) if value else record.name.split("-")[0]


def load_compare_runs(run_dirs: Sequence[Path], hosts: Mapping[str, str] | None = None) -> list[CompareRun]:
    """Read the run folders (each must hold a ``run.json``) and label each by what differs."""
    records = []
    for run_dir in run_dirs:
        if not (Path(run_dir) / "run.json").is_file():
            raise InputError(f"{run_dir}: not a run folder (no run.json); give folders made by `lorawf run` or "
                             "`lorawf sweep`")
        records.append(read_record(Path(run_dir)))
    labels = differing_settings(records)
    return [CompareRun(Path(d), r, (hosts or {}).get(r.name), tuple(label))
            for d, r, label in zip(run_dirs, records, labels)]


def match_prompts(lists: Sequence[Sequence[str]]) -> tuple[list[str], list[list[int | None]]]:
    """The page's prompts and, per run, where each is in that run's own list (``None``: the run lacks it).

    Runs from one template have the same prompts in the same order, each with its own trigger token in them
    (``..., inkwash style`` and ``..., charcoal style``): when every run has the same number of prompts they
    are matched by position and a heading shows the different texts; otherwise by exact text."""
    known = [list(p) for p in lists if p]
    if known and len({len(p) for p in known}) == 1:
        size = len(known[0])
        headings = []
        for index in range(size):
            texts = list(dict.fromkeys(p[index] for p in known))
            headings.append(texts[0] if len(texts) == 1 else " | ".join(texts[:3]) + (" | ..." if len(texts) > 3
                                                                                     else ""))
        return headings, [list(range(size)) if p else [None] * size for p in lists]
    prompts: list[str] = []
    for own in lists:
        for prompt in own:
            if prompt not in prompts:
                prompts.append(prompt)
    return prompts, [[list(own).index(t) if t in own else None for t in prompts] for own in lists]


def _href(target: Path, page_dir: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix())


def _e(text: object) -> str:
    return html.escape(printable(str(text)), quote=True)


CSS = f"""
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1a1a1a;background:#fff}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:15px;margin:28px 0 8px;font-weight:600}}
.muted{{color:#777}} table{{border-collapse:collapse}}
.grid td,.grid th{{border:1px solid #ddd;padding:4px;vertical-align:middle}}
.grid th.step{{font-weight:600;text-align:center}} .grid th.run{{text-align:left;min-width:150px;max-width:240px}}
.grid img{{width:{CELL_WIDTH}px;height:auto;display:block}}
.cell{{width:{CELL_WIDTH}px;min-height:{CELL_WIDTH // 2}px}}
.missing{{width:{CELL_WIDTH}px;height:{CELL_WIDTH // 2}px;display:flex;align-items:center;justify-content:center;
background:#f1f1f1;color:#888;font-size:12px}}
.runs td,.runs th{{border-bottom:1px solid #e4e4e4;padding:4px 10px 4px 0;text-align:left}}
.ok{{color:#1b7f3b}} .bad{{color:#b3261e}} small{{color:#777}}
"""


def write_compare_page(runs: Sequence[CompareRun], out: Path, *, title: str, png: bool = True,
                       generated: datetime | None = None) -> ComparePage:
    """Write the page to ``out`` (atomically) and, with ``png``, ``<out stem>-prompt-<N>.png`` beside it."""
    out = Path(out)
    check_write_target(out)
    page_dir = out.parent
    images = {id(run): collect_validation_images(run.run_dir) for run in runs}
    prompts, positions = match_prompts([record_prompts(run.record) for run in runs])
    rows = max([len(prompts)] + [img.prompt_index + 1 for found in images.values() for img in found])
    steps = sorted({img.step for found in images.values() for img in found}
                   | {s for run in runs for s in run.record.plan.get("checkpoint_steps") or [] if isinstance(s, int)})
    parts = [(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"),
             f"<p class=muted>{len(runs)} runs · {len(prompts)} prompts"
             + (f" · generated {_e(iso_utc(generated))}" if generated else "") + "</p>"]
    grids: list[tuple[list[ValidationImage], Path, str]] = []
    count = 0
    for index in range(rows):
        prompt_of = {id(run): positions[n][index] if index < len(prompts) else index for n, run in enumerate(runs)}
        text = prompts[index] if index < len(prompts) else f"prompt {index + 1}"
        parts.append(f"<h2>{index + 1}. {_e(text)}</h2><table class=grid><tr><th></th>"
                     + "".join(f"<th class=step>step {s}</th>" for s in steps) + "</tr>")
        grid_images: list[ValidationImage] = []
        for row, run in enumerate(runs):
            mine = {img.step: img for img in images[id(run)] if img.prompt_index == prompt_of[id(run)]}
            parts.append(f"<tr><th class=run>{_e(run.label_text)}<br><small>{_e(run.record.name)}</small></th>")
            for step in steps:
                img = mine.get(step)
                if img is None:
                    why = "not yet" if run.record.outcome in ("pending",) else run.record.outcome
                    parts.append(f"<td><div class=missing>{_e('no image' if why == 'success' else why)}</div></td>")
                    continue
                count += 1
                src = _href(img.path, page_dir)
                alt = f"{run.record.name} at step {step}"
                parts.append(f'<td class=cell><a href="{src}"><img src="{src}" alt="{_e(alt)}" '
                             f'loading=lazy></a></td>')
                grid_images.append(ValidationImage(img.path, step, row))
            parts.append("</tr>")
        parts.append("</table>")
        if png and runs and steps:
            target = page_dir / f"{out.stem}-prompt-{index + 1}.png"
            grids.append((grid_images, target, f"{index + 1}. {text}"))
            parts.append(f'<p><a href="{_href(target, page_dir)}">this grid as one PNG</a></p>')
    parts.append(_runs_table(runs, page_dir))
    parts.append("</body></html>\n")
    labels = [run.label_text for run in runs]
    # one grid per prompt, drawn in parallel (Pillow lets go of the GIL while it decodes and scales)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        pngs = list(pool.map(lambda grid: build_contact_sheet(grid[0], labels, grid[1], title=grid[2], steps=steps),
                             grids))
    atomic_write_text(out, "".join(parts))
    return ComparePage(out, tuple(pngs), len(runs), rows, len(steps), count)


def _runs_table(runs: Sequence[CompareRun], page_dir: Path) -> str:
    rows = [("<h2>Runs</h2><table class=runs><tr><th>run</th><th>settings</th><th>host</th><th>steps</th>"
            "<th>duration</th><th>outcome</th><th>files</th></tr>")]
    for run in runs:
        record = run.record
        folder = _href(run.run_dir, page_dir)
        running = record.timings.durations().get("running_seconds")
        outcome = record.outcome + (f": {record.error}" if record.error else "")
        links = []
        if (run.run_dir / SHEET_NAME).is_file():
            links.append(f'<a href="{_href(run.run_dir / SHEET_NAME, page_dir)}">contact sheet</a>')
        for entry in (*record.checkpoints, *((record.final_lora,) if record.final_lora else ())):
            label = f"step {entry.step}" if entry.step else "final"
            links.append(f'<a href="{_href(run.run_dir / entry.path, page_dir)}">{_e(label)}</a>')
        rows.append(
            f'<tr><td><a href="{folder}/">{_e(record.name)}</a></td><td>{_e(run.label_text)}</td>'
            f"<td>{_e(run.host or record.server_url)}</td><td>{_e(record.plan.get('max_train_steps', ''))}</td>"
            f"<td>{_e(format_duration(running) if running is not None else '')}</td>"
            f"<td class={'ok' if record.outcome == 'success' else 'bad'}>{_e(outcome)}</td>"
            f"<td>{' · '.join(links)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)
