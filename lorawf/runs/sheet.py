"""The contact sheet: one PNG of a run's validation images, one row per prompt, one column per checkpoint step.

Comparing checkpoints side by side is how a user picks the step where the style took hold. Images are found by
the names the patched workflow's ``SaveImage`` nodes give them, ``<output_name>/val_step<NNNNN>_<CCCCC>_.png``,
where ``CCCCC`` (00001, 00002, ...) is the prompt's position. Pillow is imported lazily (extra ``sheet``);
the output is deterministic: same images, prompts and title give the same bytes.
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lorawf.comfy.graph import is_link
from lorawf.errors import InputError
from lorawf.fsutil import atomic_write_bytes, check_write_target
from lorawf.runs.record import RECORD_NAME, SHEET_NAME, VALIDATION_IMAGE_RE, RunRecord, read_record

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageDraw as PILImageDraw
    from PIL import ImageFont as PILImageFont

    Font = PILImageFont.ImageFont | PILImageFont.FreeTypeFont

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (120, 120, 120)
CELL_BACKGROUND = (246, 246, 246)
PLACEHOLDER = (222, 222, 222)
PLACEHOLDER_LINE = (200, 200, 200)


# ------------------------------------------------------------------------------------------ finding images


@dataclass(frozen=True)
class ValidationImage:
    """One validation image: the checkpoint ``step`` it shows and its 0-based ``prompt_index``."""

    path: Path
    step: int
    prompt_index: int


def parse_validation_name(name: str) -> tuple[int, int] | None:
    """``(step, prompt_index)`` from ``val_step<NNNNN>_<CCCCC>_.png`` (counter 1 = prompt 0), else ``None``."""
    match = VALIDATION_IMAGE_RE.match(name)
    if not match or int(match.group(2)) < 1:
        return None
    return int(match.group(1)), int(match.group(2)) - 1


def collect_validation_images(run_dir: Path) -> list[ValidationImage]:
    """Every validation image under ``run_dir`` (any subfolder), sorted by step, prompt and path."""
    found = []
    for path in Path(run_dir).rglob("*.png"):
        parsed = parse_validation_name(path.name)
        if parsed is not None and path.is_file():
            found.append(ValidationImage(path, *parsed))
    return sorted(found, key=lambda v: (v.step, v.prompt_index, str(v.path)))


# ------------------------------------------------------------------------------------------ prompts, title


def split_prompts(text: str) -> list[str]:
    """FluxTrainer's reading of ``sample_prompts``: split on ``|``, strip, drop empty and ``#`` pieces."""
    pieces = (p.strip() for p in text.split("|"))
    return [p for p in pieces if p and not p.startswith("#")]


def prompts_from_workflow(workflow: Mapping[str, Any]) -> list[str]:
    """The validation prompts of an API-format workflow: the training initialiser's prompt input
    (``sample_prompts``; SDXL's ``sample_prompts_pos``), or the text of the node linked into it (its only string
    input, or ``value``/``string``). ``[]`` when not found."""
    from lorawf.training.families import FAMILIES

    prompt_input = {f.init_class: f.prompt_inputs[0] for f in FAMILIES.values()}
    for node in workflow.values():
        if not isinstance(node, dict) or node.get("class_type") not in prompt_input:
            continue
        value: Any = (node.get("inputs") or {}).get(prompt_input[str(node["class_type"])])
        if isinstance(value, str):
            return split_prompts(value)
        source = workflow.get(str(value[0])) if is_link(value) else None
        if isinstance(source, dict):
            inputs = source.get("inputs") or {}
            texts = {k: v for k, v in inputs.items() if isinstance(v, str)}
            for key in ("value", "string", "text"):
                if key in texts:
                    return split_prompts(texts[key])
            if len(texts) == 1:
                return split_prompts(next(iter(texts.values())))
    return []


def record_prompts(record: RunRecord) -> list[str]:
    """The record's prompts; for a record without them, the template (if still on disk) with the patch applied."""
    if record.prompts:
        return list(record.prompts)
    try:
        import jsonpatch

        from lorawf.workflow.io import as_api_workflow, read_json

        template = as_api_workflow(read_json(Path(record.template)), record.template)
        workflow = jsonpatch.apply_patch(template, record.patch, in_place=False)
    except Exception:  # noqa: BLE001 - any failure means "prompts unknown"; rows get numbered labels
        return []
    return prompts_from_workflow(workflow) if isinstance(workflow, dict) else []


def sheet_title(record: RunRecord) -> str:
    """``<name> - <N> images - <steps> steps - lr <lr> - dim <dim> - <outcome>``: the sheet's title line."""
    plan = record.plan
    parts = [record.name]
    for key, fmt in (("images", "{} images"), ("max_train_steps", "{} steps"), ("learning_rate", "lr {:g}"),
                     ("network_dim", "dim {}")):
        value = plan.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(fmt.format(value))
    if record.outcome != "success":
        parts.append(record.outcome)
    return " - ".join(parts)


# ------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet with ``rows`` prompts and ``columns`` steps. Pure."""

    rows: int
    columns: int
    cell: int = 192
    pad: int = 8
    label_width: int = 232
    title_height: int = 34
    header_height: int = 22

    @property
    def width(self) -> int:
        return self.pad + self.label_width + self.columns * (self.cell + self.pad)

    @property
    def height(self) -> int:
        return self.title_height + self.header_height + self.rows * (self.cell + self.pad) + self.pad

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of a cell, right/bottom exclusive."""
        left = self.pad + self.label_width + column * (self.cell + self.pad)
        top = self.title_height + self.header_height + row * (self.cell + self.pad)
        return left, top, left + self.cell, top + self.cell

    def header_box(self, column: int) -> tuple[int, int, int, int]:
        left, _, right, _ = self.cell_box(0, column)
        return left, self.title_height, right, self.title_height + self.header_height

    def label_box(self, row: int) -> tuple[int, int, int, int]:
        _, top, _, bottom = self.cell_box(row, 0)
        return self.pad, top, self.pad + self.label_width - self.pad, bottom


# ------------------------------------------------------------------------------------------ drawing


def _pillow() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    try:
        from PIL import Image, ImageDraw, ImageFont, ImageOps
    except ImportError:
        raise InputError(
            "the contact sheet needs Pillow, which is not installed", hint="pip install 'lorawf[sheet]'"
        ) from None
    return Image, ImageDraw, ImageFont, ImageOps


def _font(image_font: ModuleType, size: int) -> Font:
    try:
        font: Font = image_font.load_default(size=size)
    except (TypeError, OSError, AttributeError):  # Pillow 10.0, or no FreeType: the fixed bitmap font
        font = image_font.load_default()
    return font


def _drawable(text: str) -> str:
    """``text`` folded to ASCII (accents dropped, other characters ``?``): Pillow's default fonts have Latin
    glyphs only, and the same text must give the same pixels with the bitmap and the FreeType default."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c if 32 <= ord(c) < 127 else ("?" if not c.isspace() else " ") for c in folded)


def _fit(draw: PILImageDraw.ImageDraw, font: Font, text: str, width: int) -> str:
    """``text`` cut with ``...`` so it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap_text(draw: PILImageDraw.ImageDraw, font: Font, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines, the last one cut with ``...``."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width and len(word) > 1:  # a word longer than a line
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(draw, font, lines[-1] + " ...", width)
    return lines


def _line_height(font: Font) -> int:
    _left, top, _right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 4


def _thumbnail(image_mod: ModuleType, image_ops: ModuleType, path: Path, size: int) -> PILImage.Image | None:
    """The image scaled to fit ``size``x``size`` (aspect kept), flattened on the cell colour; ``None`` when
    the file cannot be read as an image."""
    try:
        with image_mod.open(path) as source:
            source.load()
            if source.mode in ("RGBA", "LA", "PA") or (source.mode == "P" and "transparency" in source.info):
                rgba = source.convert("RGBA")
                flat = image_mod.new("RGB", rgba.size, CELL_BACKGROUND)
                flat.paste(rgba, mask=rgba.getchannel("A"))
            else:
                flat = source.convert("RGB")
        thumb: PILImage.Image = image_ops.contain(flat, (size, size), method=image_mod.Resampling.LANCZOS)
        return thumb
    except (OSError, ValueError, image_mod.DecompressionBombError):
        return None


def _placeholder(draw: PILImageDraw.ImageDraw, box: tuple[int, int, int, int], font: Font, text: str) -> None:
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), fill=PLACEHOLDER, outline=PLACEHOLDER_LINE)
    draw.line((left, top, right - 1, bottom - 1), fill=PLACEHOLDER_LINE)
    draw.line((left, bottom - 1, right - 1, top), fill=PLACEHOLDER_LINE)
    draw.text(((left + right) / 2, (top + bottom) / 2), text, fill=MUTED, font=font, anchor="mm")


def build_contact_sheet(
    images: Sequence[ValidationImage],
    prompts: Sequence[str],
    out: Path,
    *,
    title: str,
    steps: Iterable[int] = (),
    layout: SheetLayout | None = None,
) -> Path:
    """Draw the contact sheet PNG to ``out`` (atomically) and return ``out``.

    Rows: one per prompt (more if an image names a prompt beyond ``prompts``; those rows are labelled
    ``prompt N``). Columns: every step of ``images`` plus ``steps`` (e.g. the planned checkpoint steps), in
    order. A cell without an image (or with an unreadable one) is a crossed placeholder. When several images
    claim one cell the first in ``images`` order wins. ``layout`` overrides the geometry (rows/columns are
    recomputed). Needs Pillow (``pip install 'lorawf[sheet]'``). ``out``'s folder must exist: no folder is
    created for it (``lorawf sheet -o /nonexistent/x.png`` is an error, not a new ``/nonexistent``).
    """
    out = Path(out)
    check_write_target(out)  # before the drawing, which takes a while for a long run
    image_mod, draw_mod, font_mod, ops_mod = _pillow()
    columns = sorted({img.step for img in images} | set(steps))
    rows = max([len(prompts)] + [img.prompt_index + 1 for img in images])
    if not columns or rows == 0:
        raise InputError(f"{out}: no validation images and no steps to lay out a contact sheet")
    base = layout or SheetLayout(0, 0)
    geo = SheetLayout(rows, len(columns), base.cell, base.pad, base.label_width, base.title_height,
                      base.header_height)
    cells: dict[tuple[int, int], Path] = {}
    for img in images:
        cells.setdefault((img.prompt_index, columns.index(img.step)), img.path)

    sheet = image_mod.new("RGB", (geo.width, geo.height), BACKGROUND)
    draw = draw_mod.Draw(sheet)
    title_font, font, small = _font(font_mod, 16), _font(font_mod, 12), _font(font_mod, 11)

    title_text = _fit(draw, title_font, _drawable(title), geo.width - 2 * geo.pad)
    draw.text((geo.pad, geo.title_height // 2), title_text, fill=TEXT, font=title_font, anchor="lm")
    for col, step in enumerate(columns):
        left, top, right, bottom = geo.header_box(col)
        draw.text(((left + right) / 2, (top + bottom) / 2), f"step {step}", fill=TEXT, font=font, anchor="mm")

    line_height = _line_height(font)
    for row in range(rows):
        left, top, right, bottom = geo.label_box(row)
        text = prompts[row] if row < len(prompts) else "(prompt unknown)"
        text = _drawable(f"{row + 1}. {text}")
        max_lines = max(1, (bottom - top) // line_height)
        for n, line in enumerate(wrap_text(draw, font, text, right - left, max_lines)):
            draw.text((left, top + n * line_height), line, fill=TEXT, font=font)
        for col in range(len(columns)):
            box = geo.cell_box(row, col)
            path = cells.get((row, col))
            thumb = _thumbnail(image_mod, ops_mod, path, geo.cell) if path is not None else None
            if thumb is None:
                _placeholder(draw, box, small, "missing" if path is None else "unreadable")
                continue
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=CELL_BACKGROUND)
            x = box[0] + (geo.cell - thumb.width) // 2
            y = box[1] + (geo.cell - thumb.height) // 2
            sheet.paste(thumb, (x, y))
            thumb.close()

    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=False, compress_level=6)
    atomic_write_bytes(out, buffer.getvalue())
    return out


# ------------------------------------------------------------------------------------------ one call per run


def make_run_sheet(run_dir: Path, *, out: Path | None = None, record: RunRecord | None = None) -> Path | None:
    """Build ``run_dir/contact_sheet.png`` (or ``out``) from the run's validation images; ``None`` when there
    are none. Prompts, title and planned steps come from ``record`` (read from ``run_dir/run.json`` when not
    given; without a record the rows are numbered and the title is the folder name)."""
    run_dir = Path(run_dir)
    images = collect_validation_images(run_dir)
    if not images:
        return None
    if record is None and (run_dir / RECORD_NAME).is_file():
        record = read_record(run_dir / RECORD_NAME)
    if record is not None:
        prompts, title = record_prompts(record), sheet_title(record)
        planned = record.plan.get("checkpoint_steps")
        steps = [s for s in planned if isinstance(s, int)] if isinstance(planned, list) else []
    else:
        prompts, title, steps = [], run_dir.resolve().name, []
    return build_contact_sheet(images, prompts, out or run_dir / SHEET_NAME, title=title, steps=steps)

