"""The fake ComfyUI server continuing a FluxTrainer run (docs/fluxtrainer.md §5.5, §5.6, §7).

Every test posts prompts over HTTP to a real server process (one also listens on the websocket) and
looks only at what a client or the server machine's disk shows: ``/history``, the files the nodes
write, and the test-only ``training_log`` of ``/__test__/control state``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.comfy_server.flux_nodes import read_fake_record
from tests.comfy_server.plugin import ComfyServer
from tests.comfy_server.png import make_png

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "transcripts" / "fluxtrainer_prompt_api.json"
NAME = "flux_lora_rank4_bf16"
OUT = "flux_trainer_output"  # relative: resolves against the ComfyUI folder
STATE_FILES = {
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "train_state.json",
}


# --- helpers ------------------------------------------------------------------------------------------


def write_dataset(server: ComfyServer, rel: str, count: int) -> str:
    """``count`` images (so L = count with batch 1, 1 repeat) under the server's ComfyUI folder."""
    folder = server.root / rel
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"img{i}.png").write_bytes(make_png(8, 8, (i, 0, 0)))
        (folder / f"img{i}.txt").write_text("acpt", encoding="utf-8")
    return rel


def flux_prompt(
    dataset: str,
    *,
    max_steps: int,
    loops: list[int],
    output_name: str = "flux_lora",
    output_dir: str = OUT,
    save_state: bool = True,
    end: bool = True,
    end_state: bool = True,
    resume: str | None = None,
    skip: bool = False,
    lora: str | None = None,
    reset_on_queue: bool = True,
    learning_rate: float = 0.0004,
    gradient_dtype: str = "fp32",
) -> dict[str, Any]:
    """The recorded graph's nodes 1-5, then ``FluxTrainLoop → FluxTrainSave`` per loop (each save's
    ``lora_path`` shown by a ``PreviewAny`` "4<i>"), then ``FluxTrainEnd`` "30" (path shown by "31")."""
    base = json.loads(FIXTURE.read_text(encoding="utf-8"))
    p: dict[str, Any] = {k: copy.deepcopy(base[k]) for k in ("1", "2", "3", "4", "5")}
    p["2"]["inputs"]["reset_on_queue"] = reset_on_queue
    p["3"]["inputs"]["dataset_path"] = dataset
    p["5"]["inputs"].update(
        {
            "output_name": output_name,
            "output_dir": output_dir,
            "max_train_steps": max_steps,
            "learning_rate": learning_rate,
            "gradient_dtype": gradient_dtype,
        }
    )
    if lora is not None:  # lora_path is forceInput: a link
        p["60"] = {"class_type": "PrimitiveString", "inputs": {"value": lora}}
        p["1"]["inputs"]["lora_path"] = ["60", 0]
    if resume is not None:
        p["61"] = {
            "class_type": "FluxTrainResume",
            "inputs": {"load_state_path": resume, "skip_until_initial_step": skip},
        }
        p["5"]["inputs"]["resume_args"] = ["61", 0]
    prev = "5"
    for i, steps in enumerate(loops):
        loop, save = str(10 + 2 * i), str(11 + 2 * i)
        p[loop] = {"class_type": "FluxTrainLoop", "inputs": {"network_trainer": [prev, 0], "steps": steps}}
        p[save] = {
            "class_type": "FluxTrainSave",
            "inputs": {
                "network_trainer": [loop, 0],
                "save_state": save_state,
                "copy_to_comfy_lora_folder": False,
            },
        }
        p[str(40 + i)] = {"class_type": "PreviewAny", "inputs": {"source": [save, 1]}}
        prev = save
    if end:
        p["30"] = {
            "class_type": "FluxTrainEnd",
            "inputs": {"network_trainer": [prev, 0], "save_state": end_state},
        }
        p["31"] = {"class_type": "PreviewAny", "inputs": {"source": ["30", 2]}}
    return p


async def run(
    server: ComfyServer, prompt: dict[str, Any], timeout: float = 60.0, **extra: Any
) -> dict[str, Any]:
    """POST /prompt, then poll /history until the prompt is there; returns its history entry."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        r = await client.post("/prompt", json={"prompt": prompt, **extra})
        assert r.status_code == 200, r.text
        pid = r.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while True:
            hist = (await client.get(f"/history/{pid}")).json()
            if pid in hist:
                entry: dict[str, Any] = hist[pid]
                entry["prompt_id"] = pid
                return entry
            assert time.monotonic() < deadline, f"{pid} did not finish"
            await asyncio.sleep(0.02)


def message(entry: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for event, data in entry["status"]["messages"]:
        if event == kind:
            return dict(data)
    return None


def cached(entry: dict[str, Any]) -> list[str]:
    data = message(entry, "execution_cached")
    assert data is not None
    return list(data["nodes"])


def ok(entry: dict[str, Any]) -> dict[str, Any]:
    assert entry["status"]["status_str"] == "success", message(entry, "execution_error")
    return entry


def error(entry: dict[str, Any]) -> dict[str, Any]:
    assert entry["status"]["status_str"] == "error"
    data = message(entry, "execution_error")
    assert data is not None
    return data


def record(path: Path) -> dict[str, Any]:
    rec = read_fake_record(str(path))
    assert rec is not None, path
    return rec


def train_state(folder: Path) -> Any:
    return json.loads((folder / "train_state.json").read_text(encoding="utf-8"))


def log_of(server: ComfyServer) -> list[dict[str, Any]]:
    return list(server.state()["training_log"])


def assert_no_step_trained_twice(entries: list[dict[str, Any]]) -> None:
    spans = sorted((e["from_step"], e["to_step"]) for e in entries)
    for (_a, b), (c, _d) in itertools.pairwise(spans):
        assert c >= b, spans


# --- state folders -------------------------------------------------------------------------------------


async def test_save_state_writes_accelerate_state_folders(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)  # L = 2
    entry = ok(await run(comfy_server, flux_prompt(ds, max_steps=5, loops=[3, 2])))
    out = comfy_server.root / OUT
    for folder in (f"{NAME}-step00003-state", f"{NAME}-step00005-state", f"{NAME}-state"):
        assert {p.name for p in (out / folder).iterdir()} == STATE_FILES, folder
    # current_epoch is the pass counter: loop 3 with L = 2 started two passes, loop 2 a third
    assert train_state(out / f"{NAME}-step00003-state") == {"current_epoch": 2, "current_step": 3}
    assert train_state(out / f"{NAME}-step00005-state") == {"current_epoch": 3, "current_step": 5}
    assert train_state(out / f"{NAME}-state") == {"current_epoch": 3, "current_step": 5}
    fresh = {
        "global_step": 3,
        "resumed_from_step": None,
        "resumed_from": None,
        "scheduler_step": 3,
        "weights_from": None,
        "trained_steps": 3,
        "base_lr": 0.0004,
    }
    assert record(out / f"{NAME}-step00003-state" / "model.safetensors") == fresh
    assert record(out / f"{NAME}-step00003.safetensors") == fresh
    assert record(out / f"{NAME}.safetensors")["global_step"] == 5
    scheduler = json.loads((out / f"{NAME}-step00005-state" / "scheduler.bin").read_text(encoding="utf-8"))
    assert scheduler["last_epoch"] == 5
    assert entry["outputs"]["40"] == {"text": [f"{OUT}/{NAME}-step00003.safetensors"]}
    # the ss_ metadata that clients read is unchanged: ss_steps is g
    header = json.loads((out / f"{NAME}-step00005.safetensors").read_bytes()[8:])
    assert header["__metadata__"]["ss_steps"] == "5"


async def test_state_folder_details(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    # fp16 gradients add accelerate's scaler.pt
    ok(await run(comfy_server, flux_prompt(ds, max_steps=2, loops=[2], gradient_dtype="fp16", end=False)))
    folder = comfy_server.root / OUT / f"{NAME}-step00002-state"
    assert {p.name for p in folder.iterdir()} == STATE_FILES | {"scaler.pt"}
    # kohya writes current_step.value + 1: a state saved before any batch ran says step 1 (g is 0)
    prompt = flux_prompt(ds, max_steps=2, loops=[], output_name="early")
    prompt["11"] = {
        "class_type": "FluxTrainSave",
        "inputs": {"network_trainer": ["5", 0], "save_state": True, "copy_to_comfy_lora_folder": False},
    }
    prompt["30"]["inputs"]["network_trainer"] = ["11", 0]
    ok(await run(comfy_server, prompt))
    assert train_state(comfy_server.root / OUT / "early_rank4_bf16-step00000-state") == {
        "current_epoch": 0,
        "current_step": 1,
    }


async def test_flux_train_resume_returns_its_inputs_unchecked(comfy_server: ComfyServer) -> None:
    prompt = {
        "1": {
            "class_type": "FluxTrainResume",
            "inputs": {"load_state_path": "/no/such/state\n", "skip_until_initial_step": True},
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    entry = ok(await run(comfy_server, prompt))
    assert json.loads(entry["outputs"]["2"]["text"][0]) == {
        "resume": "/no/such/state\n",
        "skip_until_initial_step": True,
    }


# --- Init's failures -----------------------------------------------------------------------------------


async def test_init_failures_with_resume_args_and_lora_path(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    ok(await run(comfy_server, flux_prompt(ds, max_steps=4, loops=[4], output_name="first")))
    state = f"{OUT}/first_rank4_bf16-step00004-state"  # S = 4
    (comfy_server.root / "empty_state").mkdir()
    no_optimizer = comfy_server.root / "no_optimizer"
    shutil.copytree(comfy_server.root / state, no_optimizer)
    (no_optimizer / "optimizer.bin").unlink()
    missing = str(comfy_server.root / "no_such_state")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"resume": missing}, "ValueError", f"Tried to find {missing} but folder does not exist"),
        # the multiline widget's trailing newline
        ({"resume": state + "\n"}, "ValueError", f"Tried to find {state}\n but folder does not exist"),
        # a checkpoint file is no folder either
        (
            {"resume": f"{OUT}/first_rank4_bf16.safetensors"},
            "ValueError",
            f"Tried to find {OUT}/first_rank4_bf16.safetensors but folder does not exist",
        ),
        (
            {"resume": "empty_state"},
            "FileNotFoundError",
            "[Errno 2] No such file or directory: 'empty_state/pytorch_model.bin'",
        ),
        (
            {"resume": str(no_optimizer)},
            "FileNotFoundError",
            f"[Errno 2] No such file or directory: '{no_optimizer}/optimizer.bin'",
        ),
        (
            {"resume": state, "max_steps": 4},
            "AssertionError",
            "max_train_steps should be greater than initial step: 4 vs 4",
        ),
        (
            {"resume": state, "max_steps": 3},
            "AssertionError",
            "max_train_steps should be greater than initial step: 3 vs 4",
        ),
        (
            {"lora": f"{OUT}/nope.safetensors"},
            "FileNotFoundError",
            f'No such file or directory: "{OUT}/nope.safetensors"',
        ),
        (
            {"lora": "/srv/x/nope.pt"},
            "FileNotFoundError",
            "[Errno 2] No such file or directory: '/srv/x/nope.pt'",
        ),
        # both wrong: the lora_path error comes first
        (
            {"lora": "nope.safetensors", "resume": missing},
            "FileNotFoundError",
            'No such file or directory: "nope.safetensors"',
        ),
    ]
    out = comfy_server.root / OUT
    for i, (case, exc_type, text) in enumerate(cases):
        name = f"fail{i}"
        kw = {k: v for k, v in case.items() if k != "max_steps"}
        prompt = flux_prompt(ds, max_steps=int(case.get("max_steps", 10)), loops=[2], output_name=name, **kw)
        err = error(await run(comfy_server, prompt))
        assert (err["node_id"], err["node_type"]) == ("5", "InitFluxLoRATraining"), case
        assert (err["exception_type"], err["exception_message"]) == (exc_type, text + "\n"), case
        assert "5" not in err["executed"]
        # Init fails after writing its two JSON dumps
        assert (out / f"{name}_args.json").is_file() and (out / f"{name}_workflow.json").is_file()
        assert not (out / f"{name}_rank4_bf16-step00002.safetensors").exists()
    # without train_state.json there is no step check (and no S)
    no_train_state = comfy_server.root / "no_train_state"
    shutil.copytree(comfy_server.root / state, no_train_state)
    (no_train_state / "train_state.json").unlink()
    ok(
        await run(
            comfy_server,
            flux_prompt(ds, max_steps=2, loops=[2], output_name="nts", resume=str(no_train_state)),
        )
    )
    rec = record(out / "nts_rank4_bf16-step00002.safetensors")
    assert (rec["resumed_from_step"], rec["scheduler_step"]) == (None, 6)  # the scheduler still was at 4


# --- resuming ------------------------------------------------------------------------------------------


async def test_resume_restarts_g_but_continues_the_schedule(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    out = comfy_server.root / OUT
    first = ok(await run(comfy_server, flux_prompt(ds, max_steps=16, loops=[4], output_name="seg1")))
    state1 = f"{OUT}/seg1_rank4_bf16-step00004-state"
    # segment 2: same N, a different learning rate (the state's base LR wins), loops adding up to 6
    second = ok(
        await run(
            comfy_server,
            flux_prompt(ds, max_steps=16, loops=[6], output_name="seg2", resume=state1, learning_rate=0.1),
        )
    )
    # g restarted: names, lora_path and ss_steps say 6, not 10
    assert second["outputs"]["40"] == {"text": [f"{OUT}/seg2_rank4_bf16-step00006.safetensors"]}
    rec = record(out / "seg2_rank4_bf16-step00006.safetensors")
    assert rec == {
        "global_step": 6,
        "resumed_from_step": 4,
        "resumed_from": state1,
        "scheduler_step": 10,
        "weights_from": None,
        "trained_steps": 10,
        "base_lr": 0.0004,
    }
    # its state folder says the relative step, the scheduler the absolute one
    state2 = out / "seg2_rank4_bf16-step00006-state"
    assert train_state(state2) == {"current_epoch": 3, "current_step": 6}
    assert json.loads((state2 / "scheduler.bin").read_text(encoding="utf-8"))["last_epoch"] == 10
    assert record(out / "seg2_rank4_bf16.safetensors")["global_step"] == 6
    # segment 3 resumes from segment 2's state: S is 6 (train_state.json), the schedule is at 10
    third = ok(
        await run(
            comfy_server, flux_prompt(ds, max_steps=16, loops=[6], output_name="seg3", resume=str(state2))
        )
    )
    rec3 = record(out / "seg3_rank4_bf16-step00006.safetensors")
    assert (rec3["resumed_from_step"], rec3["scheduler_step"], rec3["trained_steps"]) == (6, 16, 16)
    log = log_of(comfy_server)
    assert [
        (e["prompt_id"], e["node"], e["g_from"], e["g_to"], e["from_step"], e["to_step"]) for e in log
    ] == [
        (first["prompt_id"], "10", 0, 4, 0, 4),
        (second["prompt_id"], "10", 0, 6, 4, 10),
        (third["prompt_id"], "10", 0, 6, 10, 16),
    ]
    assert [e["resumed_from"] for e in log] == [None, 4, 6]
    assert {e["outcome"] for e in log} == {"completed"}
    assert_no_step_trained_twice(log)


async def test_loops_stay_relative_and_guard_with_g(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)  # L = 2
    ok(await run(comfy_server, flux_prompt(ds, max_steps=6, loops=[4], output_name="a")))
    # S = 4, N = 6: FluxTrainLoop(8) aims at g = 8 and stops at the first pass boundary after g >= 6
    entry = ok(
        await run(
            comfy_server,
            flux_prompt(
                ds, max_steps=6, loops=[8], output_name="b", resume=f"{OUT}/a_rank4_bf16-step00004-state"
            ),
        )
    )
    assert entry["outputs"]["40"] == {"text": [f"{OUT}/b_rank4_bf16-step00006.safetensors"]}
    last = log_of(comfy_server)[-1]
    assert (last["g_to"], last["from_step"], last["to_step"]) == (6, 4, 10)  # past the schedule's end (6)


async def test_skip_until_initial_step_only_moves_pass_boundaries(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds3", 3)  # L = 3
    ok(await run(comfy_server, flux_prompt(ds, max_steps=10, loops=[4], output_name="a")))
    state = f"{OUT}/a_rank4_bf16-step00004-state"  # S = 4, S mod L = 1
    for skip, passes in ((False, 1), (True, 2)):
        name = f"skip{int(skip)}"
        prompt = flux_prompt(ds, max_steps=10, loops=[3], output_name=name, resume=state, skip=skip)
        ok(await run(comfy_server, prompt))
        folder = comfy_server.root / OUT / f"{name}_rank4_bf16-step00003-state"
        assert train_state(folder) == {"current_epoch": passes, "current_step": 3}
        assert record(folder / "model.safetensors")["scheduler_step"] == 7


async def test_lora_path_starts_from_those_weights_with_a_fresh_schedule(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    out = comfy_server.root / OUT
    ok(await run(comfy_server, flux_prompt(ds, max_steps=4, loops=[4], output_name="base")))
    lora = f"{OUT}/base_rank4_bf16.safetensors"
    entry = ok(
        await run(comfy_server, flux_prompt(ds, max_steps=6, loops=[6], output_name="cont", lora=lora))
    )
    assert entry["outputs"]["40"] == {"text": [f"{OUT}/cont_rank4_bf16-step00006.safetensors"]}
    rec = record(out / "cont_rank4_bf16.safetensors")
    assert (rec["weights_from"], rec["resumed_from_step"], rec["scheduler_step"], rec["trained_steps"]) == (
        lora,
        None,
        6,
        10,
    )
    args = json.loads((out / "cont_args.json").read_text(encoding="utf-8"))
    assert args["network_weights"] == lora
    assert log_of(comfy_server)[-1]["weights_from"] == lora
    # lora_path and a state: the state's model.safetensors replaces the lora weights
    state = f"{OUT}/cont_rank4_bf16-step00006-state"
    ok(
        await run(
            comfy_server, flux_prompt(ds, max_steps=9, loops=[2], output_name="both", lora=lora, resume=state)
        )
    )
    rec = record(out / "both_rank4_bf16.safetensors")
    assert (rec["weights_from"], rec["resumed_from_step"], rec["scheduler_step"], rec["trained_steps"]) == (
        lora,
        6,
        8,
        12,
    )
    args = json.loads((out / "both_args.json").read_text(encoding="utf-8"))
    assert (args["resume"], args["skip_until_initial_step"], "resume_args" in args) == (state, False, False)


# --- ComfyUI's cache -----------------------------------------------------------------------------------


async def test_identical_resubmit_runs_nothing_without_reset_on_queue(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=2, loops=[2], reset_on_queue=False)
    first = ok(await run(comfy_server, prompt))
    assert cached(first) == []
    checkpoint = comfy_server.root / OUT / f"{NAME}-step00002.safetensors"
    checkpoint.unlink()
    second = ok(await run(comfy_server, prompt))
    assert cached(second) == list(prompt)
    assert [m[0] for m in second["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert second["outputs"] == first["outputs"]  # the output nodes' cached UI
    assert not checkpoint.exists()  # nothing trained or saved again
    assert len(log_of(comfy_server)) == 1


async def test_reset_on_queue_reruns_general_config_and_everything_below(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=2, loops=[2], reset_on_queue=True)
    ok(await run(comfy_server, prompt))
    second = ok(await run(comfy_server, prompt))
    # only the nodes that do not depend on TrainDatasetGeneralConfig are reused
    assert cached(second) == ["1", "4"]
    assert len(log_of(comfy_server)) == 2
    # with reset_on_queue false the counter stays put, so a repeat is cached again
    steady = copy.deepcopy(prompt)
    steady["2"]["inputs"]["reset_on_queue"] = False
    assert cached(ok(await run(comfy_server, steady))) == ["1", "4"]
    assert cached(ok(await run(comfy_server, steady))) == list(steady)
    assert len(log_of(comfy_server)) == 3


async def test_changing_output_name_reruns_init_and_below_only(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=2, loops=[2], reset_on_queue=False)
    ok(await run(comfy_server, prompt))
    renamed = copy.deepcopy(prompt)
    renamed["5"]["inputs"]["output_name"] = "other"
    entry = ok(await run(comfy_server, renamed))
    assert cached(entry) == ["1", "2", "3", "4"]
    assert (comfy_server.root / OUT / "other_rank4_bf16-step00002.safetensors").is_file()
    # adding FluxTrainResume changes the key of Init and of everything below it
    resumed = flux_prompt(
        ds,
        max_steps=4,
        loops=[2],
        reset_on_queue=False,
        output_name="other",
        resume=f"{OUT}/other_rank4_bf16-step00002-state",
    )
    entry = ok(await run(comfy_server, resumed))
    assert cached(entry) == ["1", "2", "3", "4"]


async def test_cached_output_nodes_report_executed_from_the_cache(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=2, loops=[2], reset_on_queue=False)
    ws = await websockets.connect(f"{comfy_server.ws_url}/ws?clientId=c")
    try:
        await ws.recv()
        pids = []
        frames: dict[str, list[dict[str, Any]]] = {}
        for _ in range(2):
            entry = ok(await run(comfy_server, prompt, client_id="c"))
            pids.append(entry["prompt_id"])
            got: list[dict[str, Any]] = []
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                got.append(frame)
                if frame["type"] == "executing" and frame["data"].get("node") is None:
                    break
            frames[entry["prompt_id"]] = got
    finally:
        await ws.close()
    again = frames[pids[1]]
    assert not [f for f in again if f["type"] in ("executing", "progress") and f["data"].get("node")]
    executed = {f["data"]["node"]: f["data"]["output"] for f in again if f["type"] == "executed"}
    # FluxTrainEnd returns no UI; from the cache it still sends executed, with output null
    assert executed == {
        "30": None,
        "31": {"text": [f"{OUT}/{NAME}.safetensors"]},
        "40": {"text": [f"{OUT}/{NAME}-step00002.safetensors"]},
    }
    first = [f["data"]["node"] for f in frames[pids[0]] if f["type"] == "executed"]
    assert sorted(first) == ["31", "40"]


async def test_nodes_before_a_failure_stay_cached(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=4, loops=[2], reset_on_queue=False, resume="no_such_state")
    first = await run(comfy_server, prompt)
    assert error(first)["node_type"] == "InitFluxLoRATraining"
    again = await run(comfy_server, prompt)  # a retry: Init runs (and fails) again, the rest is reused
    assert error(again)["executed"] == []
    assert cached(again) == ["1", "2", "3", "4", "61"]


async def test_a_cached_trainer_goes_on_from_where_it_stopped(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=10, loops=[2], reset_on_queue=False, end=False)
    ok(await run(comfy_server, prompt))
    longer = copy.deepcopy(prompt)
    longer["10"]["inputs"]["steps"] = 3
    entry = ok(await run(comfy_server, longer))
    assert cached(entry) == ["1", "2", "3", "4", "5"]
    # Init did not run again: the loop got the same trainer object, already at g = 2
    assert entry["outputs"]["40"] == {"text": [f"{OUT}/{NAME}-step00005.safetensors"]}
    assert [(e["g_from"], e["g_to"]) for e in log_of(comfy_server)] == [(0, 2), (2, 5)]


# --- restarts ------------------------------------------------------------------------------------------


async def test_restart_empties_the_cache_and_keeps_the_files(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    prompt = flux_prompt(ds, max_steps=8, loops=[4], reset_on_queue=False)
    ok(await run(comfy_server, prompt))
    out = comfy_server.root / OUT
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    comfy_server.control("restart")
    assert comfy_server.state()["restarts"] == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert len(log_of(comfy_server)) == 1  # the test log outlives the "process"
    entry = ok(await run(comfy_server, prompt))
    assert cached(entry) == []  # a new process has nothing cached
    resumed = flux_prompt(
        ds, max_steps=8, loops=[4], output_name="after", resume=f"{OUT}/{NAME}-step00004-state"
    )
    ok(await run(comfy_server, resumed))
    assert record(out / "after_rank4_bf16.safetensors")["scheduler_step"] == 8
    assert [e["restarts"] for e in log_of(comfy_server)] == [0, 1, 1]


async def test_training_log_records_interrupted_and_cancelled_loops(comfy_server: ComfyServer) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    comfy_server.control("config", step_delay=0.01)
    prompt = flux_prompt(ds, max_steps=1000, loops=[1000], output_name="long")
    async with httpx.AsyncClient(base_url=comfy_server.url, timeout=30) as client:
        pid = (await client.post("/prompt", json={"prompt": prompt})).json()["prompt_id"]
        await asyncio.sleep(0.5)
        await client.post("/interrupt", json={})
        while pid not in (await client.get(f"/history/{pid}")).json():
            await asyncio.sleep(0.02)
        assert message((await client.get(f"/history/{pid}")).json()[pid], "execution_interrupted")
        pid2 = (await client.post("/prompt", json={"prompt": prompt})).json()["prompt_id"]
        await asyncio.sleep(0.5)
    comfy_server.control("restart")
    interrupted, cancelled = log_of(comfy_server)
    assert (interrupted["prompt_id"], interrupted["outcome"]) == (pid, "interrupted")
    assert (cancelled["prompt_id"], cancelled["outcome"], cancelled["restarts"]) == (pid2, "cancelled", 0)
    for e in (interrupted, cancelled):
        assert 0 < e["to_step"] < 1000 and e["from_step"] == 0


@pytest.mark.parametrize("relative", [True, False])
async def test_resume_path_relative_to_the_comfyui_folder_or_absolute(
    comfy_server: ComfyServer, relative: bool
) -> None:
    ds = write_dataset(comfy_server, "input/ds2", 2)
    ok(await run(comfy_server, flux_prompt(ds, max_steps=6, loops=[2], output_name="a")))
    state = f"{OUT}/a_rank4_bf16-step00002-state"
    path = state if relative else os.path.join(str(comfy_server.root), state)
    ok(await run(comfy_server, flux_prompt(ds, max_steps=6, loops=[4], output_name="b", resume=path)))
    assert record(comfy_server.root / OUT / "b_rank4_bf16.safetensors")["resumed_from"] == path
