"""The pure event fold, fed the recorded real-server transcripts (no network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.events import (
    SCHEMA,
    Cached,
    Done,
    ErrorEvent,
    Executing,
    Output,
    OutputFile,
    Progress,
    Queued,
    RunState,
    Started,
    WarningEvent,
    classify_output,
    output_files,
    parse_binary_frame,
    sorted_pending,
)

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "fixtures" / "transcripts"
SLOW = frozenset({"AcceptSlowSteps"})


def load(name: str) -> Any:
    return json.loads((TRANSCRIPTS / name).read_text(encoding="utf-8"))


def fold(state: RunState, records: list[dict[str, Any]]) -> list[Any]:
    events: list[Any] = []
    for record in records:
        if record.get("kind") == "text":
            events += state.feed(record["msg"])
    return events


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


def test_success_transcript_folds_to_success_with_file_output() -> None:
    rec = load("transcript_success.json")
    state = RunState(rec["prompt_id"], rec["prompt"], loop_classes=SLOW)
    events = fold(state, rec["messages"])
    assert kinds(events)[:3] == ["started", "executing", "progress"]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.value for p in progress] == [1, 2, 3, 4, 5] and {p.max for p in progress} == {5}
    assert (progress[-1].overall_value, progress[-1].overall_max) == (5, 5)
    outputs = [e for e in events if isinstance(e, Output)]
    assert [(o.key, o.role) for o in outputs] == [("text", "text"), ("files", "file")]
    assert outputs[1].filename == "accept_00002_.txt"
    assert state.outcome == "success" and state.done_signal and not state.confirmed

    history = load("history_success.json")[rec["prompt_id"]]
    assert state.feed_history(history) == []  # nothing new: every output was already announced
    assert state.confirmed and state.outcome == "success"
    assert state.files() == [OutputFile("2", "files", "accept_00002_.txt", "", "output")]


def test_error_transcript_gives_one_line_error_and_failed_outcome() -> None:
    rec = load("transcript_error.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    events = fold(state, rec["messages"])
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1
    err = errors[0]
    assert err.message == "AcceptFail #2: RuntimeError: boom"
    assert (err.node, err.node_type, err.exception_type, err.exception_message) == ("2", "AcceptFail",
                                                                                    "RuntimeError", "boom")
    assert err.traceback and "\n" not in err.message
    state.feed_history(load("history_error.json")[rec["prompt_id"]])
    assert state.outcome == "failed" and state.confirmed and state.files() == []


def test_error_known_only_from_history() -> None:
    rec = load("transcript_error.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    events = state.feed_history(load("history_error.json")[rec["prompt_id"]])
    assert kinds(events) == ["started", "error"]
    assert state.outcome == "failed" and "RuntimeError: boom" in state.describe_outcome()


def test_interrupt_transcript() -> None:
    rec = load("transcript_interrupt.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    fold(state, rec["messages"])
    assert state.outcome == "interrupted" and state.current_node == "1"
    state.feed_history(load("history_interrupt.json")[rec["prompt_id"]])
    assert state.outcome == "interrupted"
    assert "interrupted at node 1" in state.describe_outcome()


def test_interrupt_known_only_from_history() -> None:
    rec = load("transcript_interrupt.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    state.feed_history(load("history_interrupt.json")[rec["prompt_id"]])
    assert state.outcome == "interrupted" and state.error is None


def test_image_transcript_outputs_images_key() -> None:
    rec = load("transcript_image.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    events = fold(state, rec["messages"])
    outs = [e for e in events if isinstance(e, Output)]
    assert [(o.key, o.role, o.filename) for o in outs] == [("images", "image", "accept_img_00001_.png")]
    assert [e.title for e in events if isinstance(e, Executing)] == ["EmptyImage", "SaveImage"]


def test_fluxtrainer_transcript_titles_and_error() -> None:
    rec = load("transcript_fluxtrainer.json")
    workflow = dict(rec["prompt"])
    workflow["5"] = {**workflow["5"], "_meta": {"title": "Init LoRA training"}}
    state = RunState(rec["prompt_id"], workflow)
    events = fold(state, rec["messages"])
    assert [e.node for e in events if isinstance(e, Executing)] == ["4", "2", "3", "1", "5"]
    err = next(e for e in events if isinstance(e, ErrorEvent))
    assert err.title == "Init LoRA training"
    assert err.message.startswith('InitFluxLoRATraining #5 "Init LoRA training": '
                                  "safetensors._safetensors_rust.SafetensorError: Error while deserializing")
    assert state.loops and list(state.loops) == ["6"] and state.overall == (0, 1)


def test_finish_before_connect_result_comes_from_history() -> None:
    rec = load("finish_before_connect.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    assert fold(state, rec["messages"]) == []  # only the sid'd status: nothing is replayed
    events = state.feed_history(rec["history"]["body"][rec["prompt_id"]])
    assert kinds(events) == ["started", "output", "output"]
    assert state.outcome == "success"
    assert [f.filename for f in state.files()] == ["accept_early_00001_.txt"]


def test_reconnect_midrun_accepts_bare_executing_and_continues() -> None:
    rec = load("reconnect_midrun.json")
    state = RunState(rec["prompt_id"], rec["prompt"], loop_classes=SLOW)
    events = fold(state, rec["messages"])
    bare = [r for r in rec["messages"] if r.get("kind") == "text" and r["msg"]["type"] == "executing"
            and "prompt_id" not in r["msg"]["data"]]
    assert bare  # the recording has the greeting
    values = [e.value for e in events if isinstance(e, Progress)]
    assert values == sorted(values) and values[-1] == 60
    assert state.outcome == "success" and state.done_signal


def test_reconnect_overlap_has_no_end_on_socket_but_history_confirms() -> None:
    rec = load("reconnect_overlap.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    fold(state, rec["messages_socket1"] + rec["messages_socket2"])
    assert state.outcome is None and not state.done_signal  # the socket never told us the end
    state.feed_history({"outputs": {}, "status": rec["history_status"]})
    assert state.outcome == "success" and state.confirmed


def test_other_clients_events_are_ignored() -> None:
    rec = load("queue_states.json")
    mine, other, _third = rec["transcripts"]
    state = RunState(other["prompt_id"], other["prompt"])
    # client 2's prompt was deleted while pending: it saw only broadcasts.
    assert fold(state, other["messages"]) == []
    # feeding client 1's whole stream to client 2's fold changes nothing either.
    assert fold(state, mine["messages"]) == []
    assert state.phase == "submitted" and state.outcome is None


def test_queue_positions_sorted_by_number() -> None:
    rec = load("queue_states.json")
    ids = list(rec["prompt_ids"].values())
    queue = next(a["body"] for a in rec["actions"] if a["request"] == "GET /queue" and a["body"]["queue_pending"])
    queue = dict(queue, queue_pending=list(reversed(queue["queue_pending"])))  # a heap copy is unordered
    assert [item[1] for item in sorted_pending(queue)] == ids[1:]
    state = RunState(ids[2])
    events = state.feed_queue(queue)
    assert events == [Queued(ids[2], None, 2)] and state.feed_queue(queue) == []
    assert state.in_queue(queue) == "pending"
    running = RunState(ids[0])
    assert kinds(running.feed_queue(queue)) == ["started"] and running.in_queue(queue) == "running"


def fake_loop_run(pid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    workflow = {
        "1": {"class_type": "InitFluxLoRATraining", "inputs": {}},
        "2": {"class_type": "FluxTrainLoop", "inputs": {"network_trainer": ["1", 0], "steps": 3},
              "_meta": {"title": "Train 0-3"}},
        "3": {"class_type": "FluxTrainSave", "inputs": {"network_trainer": ["2", 0]}},
        "4": {"class_type": "FluxTrainLoop", "inputs": {"network_trainer": ["3", 0], "steps": 2},
              "_meta": {"title": "Train 3-5"}},
        "5": {"class_type": "FluxTrainValidate", "inputs": {"network_trainer": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 1]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        "8": {"class_type": "FluxTrainEnd", "inputs": {"network_trainer": ["5", 0]}},
    }

    def msg(kind: str, **data: Any) -> dict[str, Any]:
        return {"type": kind, "data": {**data, "prompt_id": pid}}

    messages = [msg("execution_start"), msg("execution_cached", nodes=["1"])]
    messages += [msg("executing", node="2", display_node="2")]
    messages += [msg("progress", value=v, max=3, node="2") for v in (1, 2)]  # a loop ends at steps-1
    messages += [msg("executing", node="3", display_node="3"), msg("executing", node="7", display_node="7"),
                 msg("executed", node="7", display_node="7",
                     output={"text": ["/out/flux_lora-step00003.safetensors"]})]
    messages += [msg("executing", node="4", display_node="4")]
    messages += [msg("progress", value=v, max=2, node="4") for v in (1, 2)]
    messages += [msg("executing", node="5", display_node="5"), msg("executing", node="6", display_node="6"),
                 msg("executed", node="6", display_node="6",
                     output={"images": [{"filename": "val_00001_.png", "subfolder": "", "type": "output"}]}),
                 msg("executing", node="8", display_node="8"), msg("execution_success"),
                 {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
                 msg("executing", node=None)]
    return workflow, messages


def test_overall_progress_sums_all_training_loops() -> None:
    workflow, messages = fake_loop_run("p")
    state = RunState("p", workflow)
    events: list[Any] = []
    for m in messages:
        events += state.feed(m)
    assert [(e.node, e.loop, e.loops) for e in events if isinstance(e, Executing) and e.loop] == [
        ("2", 1, 2), ("4", 2, 2)]
    progress = [(e.title, e.value, e.max, e.overall_value, e.overall_max) for e in events
                if isinstance(e, Progress)]
    assert progress == [("Train 0-3", 1, 3, 1, 5), ("Train 0-3", 2, 3, 2, 5),
                        ("Train 3-5", 1, 2, 4, 5), ("Train 3-5", 2, 2, 5, 5)]
    roles = [(e.role, e.text or e.filename) for e in events if isinstance(e, Output)]
    assert roles == [("checkpoint", "/out/flux_lora-step00003.safetensors"), ("validation", "val_00001_.png")]
    cached = next(e for e in events if isinstance(e, Cached))
    assert cached.nodes[0].title == "InitFluxLoRATraining"
    assert state.outcome == "success" and state.done_signal and state.overall == (5, 5)
    # the node after a loop reports it in full, though its last step sent no progress (a loop ends at steps-1)
    after_first_loop = next(e for e in events if isinstance(e, Executing) and e.node == "3")
    assert (after_first_loop.overall_value, after_first_loop.overall_max) == (3, 5)


def test_execution_blocked_is_not_terminal() -> None:
    state = RunState("p")
    events = state.feed({"type": "execution_error", "data": {
        "prompt_id": "p", "node_id": "3", "node_type": "X", "exception_type": "ExecutionBlocked",
        "exception_message": "blocked by user", "traceback": [], "current_inputs": []}})
    assert [type(e) for e in events] == [WarningEvent] and state.outcome is None


def test_history_status_null_and_unknown_message_types_are_tolerated() -> None:
    state = RunState("p")
    assert state.feed({"type": "display_component", "data": {"prompt_id": "p"}}) == []
    assert state.feed({"type": "status", "data": None}) == []
    state.feed_history({"outputs": {"9": {"gifs": [{"filename": "a.gif", "subfolder": "s", "type": "temp"}],
                                          "text": ["x"], "weird": "notalist"}}, "status": None})
    assert state.outcome == "success"
    assert state.files() == [OutputFile("9", "gifs", "a.gif", "s", "temp")]


def test_output_files_scans_every_key_and_dedupes() -> None:
    outputs = {"2": {"text": ["t"], "files": [{"filename": "a.txt", "subfolder": "", "type": "output"}],
                     "images": [{"filename": "b.png"}, {"nofilename": 1}, "str"]},
               "3": {"audio": [{"filename": "c.flac", "subfolder": "x", "type": "output"}],
                     "images": [{"filename": "b.png"}]}}
    assert [f.filename for f in output_files(outputs)] == ["a.txt", "b.png", "c.flac"]
    assert classify_output(None, "2", "files", {"filename": "x.safetensors"}) == "checkpoint"


def test_binary_frames_parse_by_header() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 10
    frame = parse_binary_frame(struct.pack(">II", 1, 2) + png)
    assert frame and frame.event_type == 1 and frame.image_type == "image/png" and frame.payload_offset == 8
    meta = json.dumps({"node_id": "4", "prompt_id": "p", "display_node_id": "4",
                       "image_type": "image/jpeg"}).encode()
    frame4 = parse_binary_frame(struct.pack(">II", 4, len(meta)) + meta + b"jpegdata")
    assert frame4 and frame4.node == "4" and frame4.length - frame4.payload_offset == 8
    text = parse_binary_frame(struct.pack(">II", 3, 1) + b"7hello")
    assert text and text.node == "7"
    assert parse_binary_frame(b"\x00") is None
    assert parse_binary_frame(struct.pack(">II", 4, 50) + b"{bad") is None
    state = RunState("p")
    assert state.feed_binary(frame4) and not RunState("q").feed_binary(frame4)


def test_every_event_serialises_to_the_stable_schema() -> None:
    rec = load("transcript_success.json")
    state = RunState(rec["prompt_id"], rec["prompt"])
    events = fold(state, rec["messages"]) + [Done(rec["prompt_id"], "success", 0, "ok", tuple(state.files()))]
    for event in events:
        obj = json.loads(json.dumps(event.to_dict()))
        assert obj["schema"] == SCHEMA and obj["event"] == event.kind and obj["prompt_id"] == rec["prompt_id"]
        assert "kind" not in obj
    done = events[-1].to_dict()
    assert done["outputs"] == [{"node": "2", "key": "files", "filename": "accept_00002_.txt",
                                "subfolder": "", "type": "output"}]
    assert isinstance(events[0], Started)


def test_events_are_frozen_values_compared_hashed_and_shown_by_their_fields() -> None:
    import dataclasses

    from lorawf.comfy.follow import PollHistory, PollQueue, Receive

    a, b = Progress("p", "1", "Train", 5, 100, 5, 400), Progress("p", "1", "Train", 5, 100, 5, 400)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Progress("p", "1", "Train", 6, 100, 6, 400)
    from lorawf.comfy.values import FieldValue

    @dataclasses.dataclass(frozen=True, eq=False, repr=False)
    class One(FieldValue):
        x: int

    @dataclasses.dataclass(frozen=True, eq=False, repr=False)
    class Other(FieldValue):
        x: int

    assert One(1) == One(1) and One(1) != Other(1)  # the same fields in another class: not equal
    assert PollHistory() == PollHistory() and PollHistory() != PollQueue() and Receive(1.0) != Receive(2.0)
    assert repr(a) == ("Progress(prompt_id='p', node='1', title='Train', value=5, max=100, overall_value=5, "
                       "overall_max=400)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.value = 7  # type: ignore[misc]
