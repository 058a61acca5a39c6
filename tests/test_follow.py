"""The follow policy on recorded transcripts, with a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.events import Event, Output, RunState, WarningEvent
from lorawf.comfy.follow import (
    CycleSocket,
    Fail,
    Finish,
    FollowPolicy,
    FollowTiming,
    PollHistory,
    PollQueue,
    Receive,
    Sleep,
    backoff,
    reconnect_delay,
)
from lorawf.errors import PromptLost, ServerUnreachable, WaitTimeout

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "fixtures" / "transcripts"
TIMING = FollowTiming(poll_interval=3.0, resubscribe_after=60.0, grace=300.0)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    return data


def history_entry(recording: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/history/{id}`` entry of a recording (recorded whole, or rebuilt from its status)."""
    if "history" in recording:
        body = recording["history"]["body"]
        entry: dict[str, Any] = body[recording["prompt_id"]]
        return entry
    return {"prompt": [0, recording["prompt_id"], recording["prompt"], {}, []], "outputs": {},
            "status": recording["history_status"]}


def running(prompt_id: str) -> dict[str, Any]:
    return {"queue_running": [[0, prompt_id, {}, {}, []]], "queue_pending": []}


EMPTY_QUEUE: dict[str, Any] = {"queue_running": [], "queue_pending": []}


def policy_for(recording: Mapping[str, Any], timing: FollowTiming = TIMING, now: float = 0.0) -> FollowPolicy:
    state = RunState(recording["prompt_id"], recording.get("prompt"))
    return FollowPolicy(state, timing, now=now, where="http://127.0.0.1:8188")


def start_running(policy: FollowPolicy, now: float = 0.0) -> None:
    """The opening poll of a prompt that is running: history misses, the queue has it."""
    assert policy.next_action(now) == PollHistory()
    policy.history(None, now)
    assert policy.next_action(now) == PollQueue()
    policy.queue(running(policy.prompt_id), now)


def test_backoff_doubles_to_its_cap_and_never_overflows() -> None:
    assert [backoff(n) for n in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff(10**9) == 1.0
    assert [reconnect_delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_whole_run_is_followed_from_the_socket_and_confirmed_from_history() -> None:
    recording = load("transcript_success")
    policy = policy_for(recording)
    start_running(policy)
    events: list[Event] = []
    polls = 0
    for item in recording["messages"]:
        action = policy.next_action(item["t"])
        if isinstance(action, PollHistory):  # only once the terminal message came
            break
        assert isinstance(action, Receive)
        assert item["t"] < action.until  # messages came quicker than the poll interval: no poll
        if item["kind"] == "text":
            events += policy.message(item["msg"], item["t"])
    polls += 1
    end = recording["messages"][-1]["t"]
    assert policy.next_action(end) == PollHistory()  # the confirmation
    entry = json.loads((TRANSCRIPTS / "history_success.json").read_text())
    entry = entry.get("body", entry)
    entry = entry.get(recording["prompt_id"], entry)
    events += policy.history(entry, end)
    assert policy.next_action(end) == Finish()
    assert policy.state.outcome == "success" and policy.state.confirmed
    assert [e for e in events if isinstance(e, Output)] and policy.state.outputs
    assert polls == 1


def test_a_prompt_that_finished_before_the_socket_connected_ends_on_the_first_poll() -> None:
    recording = load("finish_before_connect")
    policy = policy_for(recording, now=2.005)
    assert policy.next_action(2.005) == PollHistory()
    events = policy.history(history_entry(recording), 2.01)
    assert policy.next_action(2.01) == Finish()
    assert policy.state.outcome == "success"
    assert [e for e in events if isinstance(e, Output)]


def test_silence_polls_every_interval_and_a_running_prompt_gets_its_socket_cycled() -> None:
    policy = policy_for(load("transcript_success"))
    start_running(policy)
    assert policy.state.phase == "running"
    assert policy.next_action(1.0) == Receive(3.0)
    now, polls = 0.0, 0
    while True:
        action = policy.next_action(now)
        if isinstance(action, CycleSocket):
            break
        if isinstance(action, Receive):
            now = action.until  # nothing arrived
            continue
        polls += 1
        if action == PollHistory():
            policy.history(None, now)
        else:
            assert action == PollQueue()
            policy.queue(running(policy.prompt_id), now)
    # a history and a queue poll at 3, 6, ... 57 s; at 60 s of silence the cycle comes first
    assert now == 60.0 and polls == 2 * 19
    # one cycle, not a storm: the reconnect it causes polls at once, silence counts from the cycle
    assert policy.next_action(now) == Receive(63.0)
    policy.reconnected(60.2)
    assert policy.next_action(60.2) == PollHistory()


def test_a_prompt_in_neither_queue_nor_history_is_lost_after_a_second_look() -> None:
    policy = policy_for(load("transcript_success"))
    policy.history(None, 0.0)
    assert policy.next_action(0.0) == PollQueue()
    policy.queue(EMPTY_QUEUE, 0.0)
    assert policy.next_action(0.0) == PollHistory()  # it may have just finished
    policy.history(None, 0.0)
    action = policy.next_action(0.0)
    assert isinstance(action, Fail) and isinstance(action.error, PromptLost)
    assert "neither queued, running nor in the history of http://127.0.0.1:8188" in str(action.error)


def test_a_prompt_that_finished_between_the_two_looks_is_not_lost() -> None:
    recording = load("finish_before_connect")
    policy = policy_for(recording)
    policy.history(None, 0.0)
    policy.queue(EMPTY_QUEUE, 0.0)
    policy.history(history_entry(recording), 0.0)
    assert policy.next_action(0.0) == Finish()


def test_a_dropped_socket_polls_at_once_and_the_run_carries_on_after_the_reconnect() -> None:
    recording = load("reconnect_midrun")
    policy = policy_for(recording)
    start_running(policy)
    warnings: list[str] = []
    for item in recording["messages"]:
        t = item["t"]
        if item["kind"] == "closed":
            events = policy.dropped("connection lost (no close frame)", t)
            warnings += [e.code for e in events if isinstance(e, WarningEvent)]
            assert policy.next_action(t) == PollHistory()
            policy.history(None, t)
            policy.queue(running(policy.prompt_id), t)
        elif item["kind"] == "client_action" and item["action"] == "ws connect" and t > 1:
            warnings += [e.code for e in policy.reconnected(t) if isinstance(e, WarningEvent)]
            assert policy.next_action(t) == PollHistory()
            policy.history(None, t)
            policy.queue(running(policy.prompt_id), t)
        elif item["kind"] == "text":
            action = policy.next_action(t)
            if isinstance(action, PollHistory):
                break  # the terminal message asks for confirmation
            assert isinstance(action, Receive)
            policy.message(item["msg"], t)
    assert warnings == ["connection_lost", "reconnected"]
    action = policy.next_action(recording["messages"][-1]["t"])
    assert action == PollHistory()
    policy.history(history_entry(recording), recording["messages"][-1]["t"])
    assert policy.next_action(99.0) == Finish() and policy.state.outcome == "success"


def test_a_terminal_message_is_confirmed_with_backoff_while_history_is_still_empty() -> None:
    recording = load("transcript_success")
    policy = policy_for(recording, timing=FollowTiming(confirm_attempts=4))
    start_running(policy)
    for item in recording["messages"]:
        if item["kind"] == "text":
            policy.message(item["msg"], 1.0)
    now, sleeps = 1.0, []
    for _ in range(3):
        assert policy.next_action(now) == PollHistory()
        policy.history({}, now)  # ComfyUI writes history just after the message
        action = policy.next_action(now)
        assert isinstance(action, Sleep)
        sleeps.append(round(action.until - now, 3))
        now = action.until
    assert sleeps == [0.05, 0.1, 0.2]
    assert policy.next_action(now) == PollHistory()
    policy.history({}, now)
    # attempts used up: a full poll (history, then the queue) decides
    assert policy.next_action(now) == PollHistory()
    policy.history(None, now)
    assert policy.next_action(now) == PollQueue()


def test_a_failing_server_is_tolerated_for_the_grace_time_then_its_error_ends_the_wait() -> None:
    policy = policy_for(load("transcript_success"), timing=FollowTiming(poll_interval=3.0, grace=10.0))
    start_running(policy)
    error = ServerUnreachable("cannot reach http://127.0.0.1:8188: connection refused")
    now = 3.0
    assert policy.next_action(now) == PollHistory()
    codes = [e.code for e in policy.request_failed(error, now) if isinstance(e, WarningEvent)]
    assert codes == ["server_trouble"]
    while True:
        action = policy.next_action(now)
        if isinstance(action, Receive):
            now = action.until
            continue
        if isinstance(action, Fail):
            break
        assert action == PollHistory()  # never "lost" while the server fails: no queue poll
        assert policy.request_failed(error, now) == []
    assert action.error is error and now > 3.0 + 10.0


def test_the_server_coming_back_is_reported_once() -> None:
    policy = policy_for(load("transcript_success"))
    start_running(policy)
    policy.request_failed(ServerUnreachable("down"), 3.0)
    events = policy.history(None, 6.0)
    assert [e.code for e in events if isinstance(e, WarningEvent)] == ["server_back"]
    assert policy.queue(running(policy.prompt_id), 6.0) == []


def test_the_overall_timeout_is_never_overslept() -> None:
    policy = policy_for(load("transcript_success"), timing=FollowTiming(poll_interval=3.0, timeout=4.5))
    start_running(policy)
    assert policy.next_action(2.0) == Receive(3.0)
    policy.history(None, 3.0)
    policy.queue(running(policy.prompt_id), 3.0)
    assert policy.next_action(3.0) == Receive(4.5)
    action = policy.next_action(4.5)
    assert isinstance(action, Fail) and isinstance(action.error, WaitTimeout)
    assert "still running" in str(action.error)
    assert policy.next_action(5.0) == action  # a decision stays made


def test_other_prompts_messages_do_not_count_as_news_of_ours() -> None:
    policy = policy_for(load("transcript_success"))
    start_running(policy)
    other = {"type": "progress", "data": {"prompt_id": "someone-else", "node": "1", "value": 1, "max": 5}}
    for t in (1.0, 2.0, 2.9):
        assert policy.message(other, t) == []
    assert policy.next_action(3.0) == PollHistory()


@pytest.mark.parametrize("name", ["transcript_error", "transcript_interrupt"])
def test_failed_and_interrupted_runs_are_confirmed_like_successes(name: str) -> None:
    recording = load(name)
    policy = policy_for(recording)
    start_running(policy)
    for item in recording["messages"]:
        if item["kind"] == "text":
            policy.message(item["msg"], 1.0)
    assert policy.next_action(1.0) == PollHistory()
    kind = name.removeprefix("transcript_")
    raw = json.loads((TRANSCRIPTS / f"history_{kind}.json").read_text())
    body = raw.get("body", raw)
    policy.history(body.get(recording["prompt_id"], body), 1.0)
    assert policy.next_action(1.0) == Finish()
    assert policy.state.outcome == {"error": "failed", "interrupt": "interrupted"}[kind]
