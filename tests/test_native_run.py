"""`lorawf run --trainer native` as a user runs it, against the project's test server acting out ComfyUI's own
training nodes (tests/comfy_server/native_nodes.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lorawf.comfy.preflight import preflight
from lorawf.comfy.schema import bundled_schemas
from lorawf.runs.sheet import collect_validation_images
from lorawf.training.plan import plan_training
from tests.comfy_server.flux_nodes import read_fake_record
from tests.test_runner import DATASET, lorawf


def captioned(tmp: Path, images: int = 12) -> Path:
    """A dataset in which every image has a caption with the token (what the native loader needs)."""
    folder = tmp / "ink"
    folder.mkdir()
    for i, src in enumerate(sorted(DATASET.glob("*.png"))[:images]):
        shutil.copy(src, folder / src.name)
        (folder / src.name).with_suffix(".txt").write_text(f"inkwash style, picture {i}")
    return folder


def model_files(server: Any) -> None:
    for rel in ("models/checkpoints/sd_xl_base_1.0.safetensors", "models/checkpoints/sd3.5_large.safetensors",
                "models/clip/clip_g.safetensors"):
        path = server.root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes((8).to_bytes(8, "little") + b"{}      ")


@pytest.fixture
def server(comfy_server_factory: Any) -> Any:
    srv = comfy_server_factory(step_delay=0.0002)
    model_files(srv)
    return srv


def events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("model", ["flux", "sdxl", "sd35"])
def test_a_native_run_ends_with_every_segment_loss_graphs_validation_record_and_sheet(
        server: Any, tmp_path: Path, model: str) -> None:
    data = captioned(tmp_path)
    out = tmp_path / "runs"
    proc = lorawf("run", str(data), "--token", "inkwash", "--trainer", "native", "--model", model, "--server",
                  server.url, "--upload", "--download", str(out), "--name", "ink", "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    run_dir = out / "ink"
    plan = plan_training(len(list(data.glob("*.png"))), model=model, trainer="native")
    steps = plan.checkpoint_steps
    assert steps == (100, 200, 300, 400, 500)

    # every segment's LoRA, trained exactly its steps on top of the previous segment's file
    previous_step = None
    for i, step in enumerate(steps, start=1):
        path = run_dir / "checkpoints" / f"ink-step{step:05d}.safetensors"
        record = read_fake_record(str(path))
        assert record is not None, path
        assert record["trained_steps"] == step
        continued = json.loads((run_dir / "workflows" / f"segment-{i:02d}.json").read_text())["20"]["inputs"]
        if previous_step is None:
            assert record["existing_lora"] is None and continued["existing_lora"] == "[None]"
        else:  # the file SaveLoRANode wrote, as the loras folder lists it (ComfyUI's counter quirk included)
            assert record["existing_lora"] == continued["existing_lora"]
            assert continued["existing_lora"].startswith(f"lorawf/ink/ink_{previous_step}_steps_")
        assert (record["rank"], record["learning_rate"], record["optimizer"]) == (16, 1e-4, "AdamW")
        previous_step = step
    final = run_dir / "checkpoints" / "ink.safetensors"
    assert final.read_bytes() == (run_dir / "checkpoints" / f"ink-step{steps[-1]:05d}.safetensors").read_bytes()

    # one loss graph per segment, the validation images of every checkpoint, one sheet
    assert sorted(p.name for p in (run_dir / "loss").iterdir()) == [f"loss_step{s:05d}.png" for s in steps]
    with Image.open(run_dir / "loss" / "loss_step00100.png") as img:
        assert img.format == "PNG"
    images = collect_validation_images(run_dir)
    prompts = json.loads((run_dir / "run.json").read_text())["prompts"]
    assert len(prompts) >= 4 and all("inkwash" in p for p in prompts)
    assert sorted({i.step for i in images}) == list(steps)
    assert len(images) == len(steps) * len(prompts)
    assert (run_dir / "contact_sheet.png").is_file()

    # run.json: one segment per prompt, each successful, the plan the native one
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["outcome"] == "success" and rec["plan"]["trainer"] == "native" and rec["plan"]["model"] == model
    segs = rec["segments"]
    assert [(s["from_step"], s["to_step"], s["outcome"]) for s in segs] == [
        (a, b, "success") for a, b in zip((0, *steps[:-1]), steps)]
    assert [s["mode"] for s in segs] == ["initial"] + ["weights"] * (len(steps) - 1)
    assert len({s["prompt_id"] for s in segs}) == len(steps) and rec["prompt_id"] == segs[-1]["prompt_id"]
    kinds = {f["path"]: f["kind"] for f in rec["files"]}
    assert sum(k == "checkpoint" for k in kinds.values()) == len(steps) and kinds["checkpoints/ink.safetensors"] == \
        "final_lora"

    # each segment's workflow is kept and passes the real schemas (but for files the snapshot server lacks)
    for i, step in enumerate(steps, start=1):
        wf = json.loads((run_dir / "workflows" / f"segment-{i:02d}.json").read_text())
        assert wf["20"]["inputs"]["steps"] == 100
        assert {p.type for p in preflight(wf, bundled_schemas())} <= {"value_not_in_list"}

    # the event stream: one done at the end, the progress source said
    evs = events(proc)
    assert [e["event"] for e in evs].count("done") == 1 and evs[-1]["event"] == "done" and evs[-1]["exit_code"] == 0
    notices = proc.stderr.splitlines()  # notices are stderr lines in every mode
    assert any(m.startswith("progress: counted in segments") for m in notices)
    assert sum(m.startswith("segment ") for m in notices) == len(steps)
    assert segs[0]["note"] == "native trainer; training progress counted in segments (the server sends none)"


def test_progress_comes_from_the_websocket_where_the_server_sends_it(comfy_server_factory: Any,
                                                                       tmp_path: Path) -> None:
    server = comfy_server_factory(step_delay=0.0002, native_progress=True)
    proc = lorawf("run", str(captioned(tmp_path, 8)), "--token", "inkwash", "--trainer", "native", "--server",
                  server.url, "--upload", "--download", str(tmp_path / "runs"), "--json", "--steps", "200",
                  tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events(proc)
    assert any(e["event"] == "progress" and e["node"] == "20" for e in evs)
    assert "progress: from the server's websocket" in proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    note = json.loads((run_dir / "run.json").read_text())["segments"][0]["note"]
    assert note == "native trainer; training progress from the server's websocket"


def test_an_uncaptioned_dataset_is_refused_before_anything_is_sent(server: Any, tmp_path: Path) -> None:
    proc = lorawf("run", str(DATASET), "--token", "inkwash", "--trainer", "native", "--server", server.url,
                  "--upload", "--download", str(tmp_path / "runs"), tmp=tmp_path)
    assert proc.returncode == 3
    assert "no caption text" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(r.method == "POST" for r in server.requests())
    assert not (tmp_path / "runs").exists()


def test_a_server_without_the_training_nodes_is_refused_before_anything_is_sent(comfy_server_factory: Any,
                                                                                tmp_path: Path) -> None:
    from lorawf.comfy.schema import bundled_object_info

    info = {k: v for k, v in bundled_object_info().items() if k not in ("TrainLoraNode", "SaveLoRANode")}
    server = comfy_server_factory(object_info=info)
    proc = lorawf("run", str(captioned(tmp_path)), "--token", "inkwash", "--trainer", "native", "--server",
                  server.url, "--upload", "--download", str(tmp_path / "runs"), tmp=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "the server has no TrainLoraNode, SaveLoRANode" in proc.stderr
    assert not any(r.method == "POST" for r in server.requests())


def test_a_failed_segment_stops_the_run_and_the_record_says_which(server: Any, tmp_path: Path) -> None:
    """A missing base model fails in the first segment's loader: nothing is continued, run.json tells."""
    (server.root / "models" / "checkpoints" / "sd_xl_base_1.0.safetensors").unlink()
    proc = lorawf("run", str(captioned(tmp_path)), "--token", "inkwash", "--trainer", "native", "--model", "sdxl",
                  "--server", server.url, "--upload", "--download", str(tmp_path / "runs"), "--name", "bad",
                  "--no-preflight", tmp=tmp_path)
    assert proc.returncode != 0
    rec = json.loads((tmp_path / "runs" / "bad" / "run.json").read_text())
    assert rec["outcome"] in ("failed", "error", "rejected")
    assert "Traceback" not in proc.stderr


def test_pick_trainer_prefers_fluxtrainer_and_falls_back_to_native() -> None:
    from lorawf.comfy.schema import bundled_schemas, parse_object_info
    from lorawf.runs.backend import pick_trainer

    everything = bundled_schemas()
    assert pick_trainer(everything, "sdxl") == ("fluxtrainer", None)
    from lorawf.comfy.schema import bundled_object_info

    info = {k: v for k, v in bundled_object_info().items() if k not in ("InitSDXLLoRATraining",)}
    trainer, why = pick_trainer(parse_object_info(info), "sdxl")
    assert trainer == "native" and why is not None and "no FluxTrainer InitSDXLLoRATraining" in why
    assert pick_trainer(parse_object_info(info), "flux") == ("fluxtrainer", None)  # Flux's nodes are all there
    neither = {k: v for k, v in info.items() if k != "TrainLoraNode"}
    assert pick_trainer(parse_object_info(neither), "sdxl") == ("fluxtrainer", None)  # its preflight says why


def test_auto_runs_natively_on_a_server_without_fluxtrainer_and_says_so(comfy_server_factory: Any,
                                                                        tmp_path: Path) -> None:
    srv = comfy_server_factory(step_delay=0.0002, without_fluxtrainer=True)
    proc = lorawf("run", str(captioned(tmp_path, 8)), "--token", "inkwash", "--server", srv.url, "--upload",
                  "--download", str(tmp_path / "runs"), "--name", "auto", "--steps", "200", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--trainer auto: the server has no FluxTrainer InitFluxLoRATraining, FluxTrainLoop" in proc.stderr
    rec = json.loads((tmp_path / "runs" / "auto" / "run.json").read_text())
    assert rec["plan"]["trainer"] == "native" and rec["outcome"] == "success"
    # --trainer fluxtrainer insists: the preflight names the missing node, nothing is queued
    proc = lorawf("run", str(tmp_path / "ink"), "--token", "inkwash", "--server", srv.url, "--upload",
                  "--download", str(tmp_path / "runs"), "--trainer", "fluxtrainer", tmp=tmp_path)
    assert proc.returncode == 4 and "FluxTrainLoop" in proc.stderr


def test_auto_runs_fluxtrainer_where_the_server_has_it(server: Any, tmp_path: Path) -> None:
    proc = lorawf("run", str(captioned(tmp_path, 8)), "--token", "inkwash", "--server", server.url, "--upload",
                  "--download", str(tmp_path / "runs"), "--name", "ft", "--steps", "200", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--trainer auto" not in proc.stderr
    rec = json.loads((tmp_path / "runs" / "ft" / "run.json").read_text())
    assert rec["plan"]["trainer"] == "fluxtrainer"


def test_auto_on_an_unreachable_server_ends_with_one_done_event(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = lorawf("run", str(captioned(tmp_path, 8)), "--token", "inkwash", "--server", f"http://127.0.0.1:{port}",
                  "--upload", "--download", str(tmp_path / "runs"), "--json", tmp=tmp_path)
    assert proc.returncode == 5, proc.stderr
    evs = events(proc)
    assert [e["event"] for e in evs].count("done") == 1 and evs[-1]["outcome"] == "unreachable"
    assert not (tmp_path / "runs").exists()
