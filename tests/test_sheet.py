"""Contact sheet: finding validation images, prompts, geometry, which image lands in which cell, determinism."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from lorawf.errors import InputError
from lorawf.runs.record import RECORD_NAME, SHEET_NAME, write_record
from lorawf.runs.sheet import (
    CELL_BACKGROUND,
    PLACEHOLDER,
    SheetLayout,
    ValidationImage,
    _pillow,
    build_contact_sheet,
    collect_validation_images,
    make_run_sheet,
    parse_validation_name,
    prompts_from_workflow,
    record_prompts,
    sheet_title,
    split_prompts,
)
from lorawf.workflow.build import build_workflow
from lorawf.workflow.patch import PatchOptions
from tests.test_record import make_record

STEPS = (250, 500, 750, 1000)
PROMPTS = ["a portrait of an elderly fisherman, ink style", "a busy city street at dusk, ink style", "a cat"]


def colour(row: int, col: int) -> tuple[int, int, int]:
    return (30 + 60 * col, 40 + 70 * row, 200 - 40 * col)


def write_images(folder: Path, *, skip: tuple[tuple[int, int], ...] = (), size: tuple[int, int] = (64, 64)) -> None:
    """One solid-colour PNG per (prompt, step), named as the patched workflow's SaveImage names them."""
    folder.mkdir(parents=True, exist_ok=True)
    for col, step in enumerate(STEPS):
        for row in range(len(PROMPTS)):
            if (row, col) not in skip:
                Image.new("RGB", size, colour(row, col)).save(folder / f"val_step{step:05d}_{row + 1:05d}_.png")


def centre(box: tuple[int, int, int, int]) -> tuple[int, int]:
    return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2


# ----------------------------------------------------------------------------------------- finding


def test_parse_validation_name() -> None:
    assert parse_validation_name("val_step01720_00006_.png") == (1720, 5)
    assert parse_validation_name("val_step00250_00000_.png") is None
    assert parse_validation_name("val_step00250_00001.png") is None
    assert parse_validation_name("ink_e000003_00_20261125.png") is None


def test_collect_finds_images_in_subfolders(tmp_path: Path) -> None:
    write_images(tmp_path / "ink-30img" / "deeper")
    (tmp_path / "notes.png").write_bytes(b"")
    (tmp_path / SHEET_NAME).write_bytes(b"")
    found = collect_validation_images(tmp_path)
    assert len(found) == len(STEPS) * len(PROMPTS)
    assert found[0] == ValidationImage(tmp_path / "ink-30img" / "deeper" / "val_step00250_00001_.png", 250, 0)
    assert [(v.step, v.prompt_index) for v in found[:4]] == [(250, 0), (250, 1), (250, 2), (500, 0)]


# ----------------------------------------------------------------------------------------- prompts


def test_split_prompts_like_fluxtrainer() -> None:
    assert split_prompts(" a cat |b dog| |# off|c") == ["a cat", "b dog", "c"]


def test_prompts_from_the_patched_bundled_template() -> None:
    built = build_workflow(30, PatchOptions("inkwash"))
    prompts = prompts_from_workflow(built.patch.workflow)
    assert len(prompts) == 6 and all(p.endswith("inkwash style") for p in prompts)
    assert prompts_from_workflow({"1": {"class_type": "InitFluxLoRATraining", "inputs": {"sample_prompts": "x|y"}}}) == [
        "x", "y",
    ]
    assert prompts_from_workflow({}) == []


def test_record_prompts_fall_back_to_template_plus_patch() -> None:
    built = build_workflow(30, PatchOptions("inkwash"))
    record = make_record(prompts=(), template=str(built.template_path), patch=built.patch.operations)
    assert record_prompts(record) == prompts_from_workflow(built.patch.workflow)
    assert record_prompts(make_record(prompts=(), template="/gone/template.json")) == []
    assert record_prompts(make_record()) == ["a cat, ink style", "a street, ink style"]


def test_sheet_title() -> None:
    assert sheet_title(make_record("ink-30img")) == "ink-30img - 30 images - 1200 steps - lr 0.0001 - dim 16"
    assert sheet_title(make_record("ink", outcome="interrupted")).endswith(" - interrupted")


# ----------------------------------------------------------------------------------------- drawing


def test_sheet_size_and_every_cell_from_the_right_image(tmp_path: Path) -> None:
    write_images(tmp_path / "run" / "ink", skip=((1, 2),))
    out = build_contact_sheet(collect_validation_images(tmp_path / "run"), PROMPTS, tmp_path / "s.png", title="ink")
    layout = SheetLayout(rows=len(PROMPTS), columns=len(STEPS))
    with Image.open(out) as sheet:
        assert sheet.size == (layout.width, layout.height)
        rgb = sheet.convert("RGB")
        for row in range(len(PROMPTS)):
            for col in range(len(STEPS)):
                box = layout.cell_box(row, col)
                if (row, col) == (1, 2):
                    # the missing cell: a placeholder (off the cross and the 'missing' label)
                    assert rgb.getpixel((box[0] + 12, (box[1] + box[3]) // 2)) == PLACEHOLDER
                    continue
                for x, y in (centre(box), (box[0] + 1, box[1] + 1), (box[2] - 2, box[3] - 2)):
                    assert rgb.getpixel((x, y)) == colour(row, col), (row, col, x, y)
        # labels are drawn: the header of column 0 and the label of row 0 have dark pixels
        for left, top, right, bottom in (layout.header_box(0), layout.label_box(0)):
            darkest, _ = rgb.crop((left, top, right, bottom)).convert("L").getextrema()
            assert darkest < 100


def test_aspect_ratio_is_kept(tmp_path: Path) -> None:
    Image.new("RGB", (100, 50), (200, 10, 10)).save(tmp_path / "val_step00100_00001_.png")
    out = build_contact_sheet(collect_validation_images(tmp_path), ["wide"], tmp_path / "s.png", title="t")
    layout = SheetLayout(1, 1)
    left, top, right, bottom = layout.cell_box(0, 0)
    with Image.open(out) as sheet:
        rgb = sheet.convert("RGB")
        assert rgb.getpixel(centre((left, top, right, bottom))) == (200, 10, 10)
        # 100x50 scaled to 192x96, centred: bands above and below are cell background
        assert rgb.getpixel(((left + right) // 2, top + 20)) == CELL_BACKGROUND
        assert rgb.getpixel(((left + right) // 2, bottom - 20)) == CELL_BACKGROUND
        assert rgb.getpixel(((left + right) // 2, top + 48 + 2)) == (200, 10, 10)


def test_planned_steps_and_unknown_prompts_add_rows_and_columns(tmp_path: Path) -> None:
    write_images(tmp_path)
    images = collect_validation_images(tmp_path)
    out = build_contact_sheet(images, PROMPTS[:1], tmp_path / "s.png", title="t", steps=(1250,))
    layout = SheetLayout(rows=len(PROMPTS), columns=len(STEPS) + 1)
    with Image.open(out) as sheet:
        assert sheet.size == (layout.width, layout.height)
        rgb = sheet.convert("RGB")
        assert rgb.getpixel(centre(layout.cell_box(2, 3))) == colour(2, 3)
        box = layout.cell_box(0, 4)  # step 1250: planned, no image
        assert rgb.getpixel((box[0] + 12, (box[1] + box[3]) // 2)) == PLACEHOLDER


def test_unreadable_image_is_a_placeholder(tmp_path: Path) -> None:
    (tmp_path / "val_step00100_00001_.png").write_bytes(b"not a png at all")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "val_step00100_00002_.png")
    out = build_contact_sheet(collect_validation_images(tmp_path), ["a", "b"], tmp_path / "s.png", title="t")
    layout = SheetLayout(2, 1)
    with Image.open(out) as sheet:
        rgb = sheet.convert("RGB")
        box = layout.cell_box(0, 0)
        assert rgb.getpixel((box[0] + 12, (box[1] + box[3]) // 2)) == PLACEHOLDER
        assert rgb.getpixel(centre(layout.cell_box(1, 0))) == (0, 0, 255)


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    write_images(tmp_path / "run", skip=((0, 0),))
    images = collect_validation_images(tmp_path / "run")
    prompts = [*PROMPTS[:2], "ünïcødé 漢字 and a very long prompt " * 6]
    a = build_contact_sheet(images, prompts, tmp_path / "a.png", title="ink - 墨")
    b = build_contact_sheet(list(reversed(images)), prompts, tmp_path / "b.png", title="ink - 墨")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_pillow_is_a_clear_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(InputError, match=r"pip install 'lorawf\[sheet\]'"):
        _pillow()


# ----------------------------------------------------------------------------------------- per run


def test_make_run_sheet_uses_the_record(tmp_path: Path) -> None:
    record = make_record(prompts=tuple(PROMPTS))
    write_record(tmp_path, record)
    write_images(tmp_path / record.name)
    out = make_run_sheet(tmp_path)
    assert out == tmp_path / SHEET_NAME
    planned = record.plan["checkpoint_steps"]  # 250..1200: 1200 has no images yet is a column
    layout = SheetLayout(len(PROMPTS), len(set(planned) | set(STEPS)))
    with Image.open(out) as sheet:
        assert sheet.size == (layout.width, layout.height)
    assert (tmp_path / RECORD_NAME).exists()


def test_make_run_sheet_without_images(tmp_path: Path) -> None:
    assert make_run_sheet(tmp_path) is None
    assert not (tmp_path / SHEET_NAME).exists()
