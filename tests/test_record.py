"""Run records: hashing, round trip, schema errors, secret refusal, listing."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from lorawf.errors import InputError, exit_code_for
from lorawf.fsutil import CHUNK
from lorawf.runs.record import (
    RECORD_NAME,
    SCHEMA,
    FileEntry,
    RecordError,
    RunRecord,
    SecretInRecord,
    Timings,
    classify_file,
    file_entry,
    list_runs,
    outcome_from_event,
    read_record,
    scan_files,
    write_record,
)
from lorawf.timefmt import iso_utc
from lorawf.training.plan import plan_training

T0 = datetime(2026, 11, 25, 18, 15, 2, 125000, tzinfo=timezone.utc)
SECRET = "s3cr3t-bearer-token-value"


def make_record(name: str = "ink-30img-20261125-181502", *, start: datetime = T0, **changes: object) -> RunRecord:
    """A realistic finished record (plan from the real planner)."""
    record = RunRecord(
        name=name,
        plan=plan_training(30).to_dict(),
        patch=[{"op": "replace", "path": "/105/inputs/output_name", "value": name}],
        template="workflows/lora_training_workflow_headless.json",
        server_url="https://gpu.example:8188",
        server_version="0.3.64",
        prompt_id="5b0c4c3e-1c8e-4b36-9d6e-0d1c4f1e2a11",
        timings=Timings(
            created=start - timedelta(seconds=3),
            submitted=start - timedelta(seconds=1),
            started=start,
            finished=start + timedelta(minutes=42, milliseconds=500),
        ),
        outcome="success",
        prompts=("a cat, ink style", "a street, ink style"),
        files=(
            FileEntry(f"{name}_rank16_bf16-step00500.safetensors", 10, "a" * 64, "checkpoint", 500),
            FileEntry(f"{name}_rank16_bf16.safetensors", 12, "b" * 64, "final_lora", None),
            FileEntry(f"{name}/val_step00500_00001_.png", 5, "c" * 64, "validation_image", 500),
        ),
    )
    return replace(record, **changes)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- files


def test_file_entry_hash_equals_hashlib(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 12345)  # several chunks and a partial one
    target = tmp_path / "ink" / "ink_rank16_bf16-step00750.safetensors"
    target.parent.mkdir()
    target.write_bytes(data)
    entry = file_entry(target, tmp_path)
    assert entry == FileEntry(
        "ink/ink_rank16_bf16-step00750.safetensors", len(data), hashlib.sha256(data).hexdigest(), "checkpoint", 750
    )


def test_file_entry_explicit_kind_and_outside_root(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("hi")
    (tmp_path / "other.txt").write_text("x")
    entry = file_entry(tmp_path / "run" / "notes.txt", tmp_path / "run", "other", 3)
    assert (entry.kind, entry.step, entry.size) == ("other", 3, 2)
    with pytest.raises(InputError, match="not inside the run folder"):
        file_entry(tmp_path / "other.txt", tmp_path / "run")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ink_rank16_bf16-step00250.safetensors", ("checkpoint", 250)),
        ("ink_rank16_bf16-step100000.safetensors", ("checkpoint", 100000)),
        ("ink_rank16_bf16.safetensors", ("final_lora", None)),
        ("ink/val_step01720_00006_.png", ("validation_image", 1720)),
        ("val_step01720_00006.png", ("other", None)),
        ("ink_args.json", ("other", None)),
    ],
)
def test_classify_file(name: str, expected: tuple[str, int | None]) -> None:
    assert classify_file(name) == expected


def test_scan_files_skips_record_hidden_and_partial(tmp_path: Path) -> None:
    (tmp_path / "ink").mkdir()
    (tmp_path / "ink" / "val_step00250_00001_.png").write_bytes(b"png")
    (tmp_path / "ink_rank16_bf16.safetensors").write_bytes(b"lora")
    (tmp_path / "ink_rank16_bf16-step00500.safetensors.part").write_bytes(b"half")
    (tmp_path / ".ink.tmp").write_bytes(b"tmp")
    (tmp_path / RECORD_NAME).write_text("{}")
    entries = scan_files(tmp_path)
    assert [(e.path, e.kind, e.step) for e in entries] == [
        ("ink/val_step00250_00001_.png", "validation_image", 250),
        ("ink_rank16_bf16.safetensors", "final_lora", None),
    ]
    assert entries[1].sha256 == hashlib.sha256(b"lora").hexdigest()


# ----------------------------------------------------------------------------------------- round trip


def test_record_round_trips(tmp_path: Path) -> None:
    record = make_record()
    path = write_record(tmp_path / "run", record, secrets=[SECRET])
    assert path == tmp_path / "run" / RECORD_NAME
    assert read_record(path) == record
    assert read_record(path.parent) == record  # a run folder works too
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert data["server"] == {"url": "https://gpu.example:8188", "comfyui_version": "0.3.64"}
    assert data["timings"]["started"] == "2026-11-25T18:15:02.125Z"
    assert data["timings"]["running_seconds"] == 2520.5
    assert data["timings"]["queued_seconds"] == 1.0
    assert data["plan"]["checkpoint_steps"] == [250, 500, 750, 1000, 1200]
    assert [f["kind"] for f in data["files"]] == ["checkpoint", "final_lora", "validation_image"]


def test_pending_record_round_trips_with_nulls(tmp_path: Path) -> None:
    record = make_record(outcome="pending", prompt_id=None, server_version=None, files=(), prompts=(),
                         timings=Timings(T0))
    write_record(tmp_path, record)
    data = json.loads((tmp_path / RECORD_NAME).read_text())
    assert data["timings"]["finished"] is None and data["timings"]["total_seconds"] is None
    assert read_record(tmp_path / RECORD_NAME) == record


def test_write_is_deterministic(tmp_path: Path) -> None:
    write_record(tmp_path / "a", make_record())
    write_record(tmp_path / "b", make_record())
    assert (tmp_path / "a" / RECORD_NAME).read_bytes() == (tmp_path / "b" / RECORD_NAME).read_bytes()


def test_iso_utc_converts_offsets() -> None:
    assert iso_utc(datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-01T10:00:00.000Z"


# ----------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"error": f"401 Unauthorized: Bearer {SECRET}"}, "$.error"),
        ({"patch": [{"op": "add", "path": "/9/inputs/x", "value": f"x{SECRET}x"}]}, "$.patch[0].value"),
        ({"prompts": (f"a cat {SECRET}",)}, "$.prompts[0]"),
    ],
)
def test_refuses_to_write_a_secret(tmp_path: Path, changes: dict[str, Any], where: str) -> None:
    record = make_record(**changes)
    with pytest.raises(SecretInRecord) as info:
        write_record(tmp_path, record, secrets=["", "1", SECRET])
    message = str(info.value)
    assert SECRET not in message and where in message and "\n" not in message
    assert not (tmp_path / RECORD_NAME).exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left either
    assert exit_code_for(info.value) == 1


def test_refuses_a_json_escaped_secret(tmp_path: Path) -> None:
    secret = 'tok"en\\value'
    with pytest.raises(SecretInRecord):
        write_record(tmp_path, make_record(error=f"bad {secret}"), secrets=[secret])
    assert not (tmp_path / RECORD_NAME).exists()


def test_refuses_credentials_in_the_url(tmp_path: Path) -> None:
    with pytest.raises(SecretInRecord, match="server.url"):
        write_record(tmp_path, make_record(server_url="https://user:pw@gpu.example:8188"))
    assert not (tmp_path / RECORD_NAME).exists()


def test_short_header_values_do_not_block_writing(tmp_path: Path) -> None:
    write_record(tmp_path, make_record(), secrets=["1", "on"])  # '1' appears in the plan; still written
    assert (tmp_path / RECORD_NAME).exists()


# ----------------------------------------------------------------------------------------- reading errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON (line 1, column 2)"),
        ("[]", "expected a JSON object"),
        ('{"schema": "lorawf.event/1"}', "not a lorawf run record"),
        ('{"schema": "lorawf.run/2"}', "upgrade lorawf"),
    ],
)
def test_read_record_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / RECORD_NAME
    path.write_text(text)
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    assert exit_code_for(info.value) == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("plan"), "missing field 'plan'"),
        (lambda d: d.update(outcome="exploded"), "outcome 'exploded' is not one of"),
        (lambda d: d["timings"].update(started="yesterday"), "timings.started 'yesterday' is not an ISO-8601"),
        (lambda d: d["files"][0].update(size="10"), "files[0]: field 'size' should be int, not str"),
        (lambda d: d["files"][0].update(size=True), "field 'size' should be int, not bool"),
        (lambda d: d["files"][1].update(sha256="xyz"), "files[1]: sha256 'xyz' is not 64"),
        (lambda d: d["files"][2].update(kind="model"), "kind 'model' is not one of"),
    ],
)
def test_read_record_schema_errors(tmp_path: Path, mutate: object, message: str) -> None:
    write_record(tmp_path, make_record())
    path = tmp_path / RECORD_NAME
    data = json.loads(path.read_text())
    mutate(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match="^" + str(path).replace("\\", "\\\\")) as info:
        read_record(path)
    assert message in str(info.value)


def test_read_missing_record(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no run record here"):
        read_record(tmp_path)


# ----------------------------------------------------------------------------------------- listing


def test_list_runs_orders_by_start_and_survives_a_corrupt_record(tmp_path: Path) -> None:
    later = make_record("aaa-later", start=T0 + timedelta(hours=5))
    earlier = make_record("zzz-earlier", start=T0, outcome="error", error="CUDA out of memory", files=())
    write_record(tmp_path / later.name, later)
    write_record(tmp_path / earlier.name, earlier)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / RECORD_NAME).write_text('{"schema": "lorawf.run/1", ')
    (tmp_path / "not-a-run").mkdir()

    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["zzz-earlier", "aaa-later", "broken"]
    first, second, broken = runs
    assert (first.outcome, first.checkpoints, first.final_lora, first.size) == ("error", 0, False, 0)
    assert (second.steps, second.checkpoints_planned, second.checkpoints, second.final_lora, second.size) == (
        1200, 5, 1, True, 27,
    )
    assert second.started == T0 + timedelta(hours=5)
    assert broken.error is not None and "not valid JSON" in broken.error and "broken" in broken.error


def test_list_runs_includes_dir_itself(tmp_path: Path) -> None:
    write_record(tmp_path, make_record("top"))
    write_record(tmp_path / "child", make_record("child", start=T0 - timedelta(days=1)))
    assert [r.name for r in list_runs(tmp_path)] == ["child", "top"]


def test_list_runs_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        list_runs(tmp_path / "nope")


def test_outcome_from_event() -> None:
    assert [outcome_from_event(o) for o in ("success", "failed", "interrupted", "cancelled", "lost", "submitted",
                                            "unreachable", "rejected")] == [
        "success", "error", "interrupted", "cancelled", "lost", "pending", "error", "error",
    ]
