"""``lorawf continue``: train the rest of a run the server lost, from its newest checkpoint on the server.

The next segment is built from the run's own recorded ``workflow.json`` (:mod:`lorawf.workflow.continuation`),
writes into its own server folder (the trainer's step counter starts again at 0: docs/fluxtrainer.md §5.6)
and is followed like any run; its checkpoints are stored locally under the run's global step numbers, and
``run.json`` lists every segment.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.comfy.events import Done, Event, Notice
from lorawf.errors import InputError
from lorawf.net.settings import ServerSettings
from lorawf.runs.engine import FollowOptions, Reporter
from lorawf.training.plan import PlanOverrides

if TYPE_CHECKING:
    from lorawf.comfy.folders import ServerFolders
    from lorawf.net.http import ComfyClient
    from lorawf.runs.record import RunRecord, Segment

WORKFLOW_NAME = "workflow.json"


def segment_workflow_name(index: int) -> str:
    """The file a continued segment's workflow is kept in (segment 1 is ``workflow.json``)."""
    return WORKFLOW_NAME if index <= 1 else f"workflow-segment-{index}.json"


def _recorded_workflow(run_dir: Path) -> dict[str, Any]:
    path = run_dir / WORKFLOW_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the run's workflow: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an API-format workflow object")
    return data


def _segments(record: RunRecord, init_inputs: dict[str, Any]) -> tuple[Segment, ...]:
    """The run's segments so far; a run never continued is one initial segment."""
    from lorawf.runs.record import Segment

    if record.segments:
        return record.segments
    total = int(init_inputs.get("max_train_steps", 0))
    return (Segment(record.prompt_id, "initial", 0, total, str(init_inputs.get("output_dir", "")),
                    record.outcome, record.timings.started, record.timings.finished),)


async def _newest_checkpoint(client: ComfyClient, folders: ServerFolders, segments: tuple[Segment, ...],
                             checkpoints: list[int], stem: str) -> tuple[int, Segment, str, bool] | None:
    """``(step, segment, server path of its .safetensors, state folder there)`` of the newest checkpoint the
    server still holds, asked file by file (``/view``); ``None`` when there is none."""
    from lorawf.comfy.folders import relative_to_output

    for segment in reversed(segments):
        for step in sorted((s for s in checkpoints if segment.from_step < s <= segment.to_step), reverse=True):
            local = step - segment.from_step
            name = f"{stem}-step{local:05d}"
            mapped = relative_to_output(f"{segment.output_dir}/{name}.safetensors", folders)
            if mapped is None:
                continue
            subfolder, filename = mapped
            if await client.remote_size(filename, subfolder, "output") is None:
                continue
            state = await client.remote_size("train_state.json", f"{subfolder}/{name}-state".strip("/"), "output")
            return step, segment, f"{segment.output_dir}/{name}.safetensors", state is not None
    return None


async def continue_run(settings: ServerSettings, run_dir: Path, reporter: Reporter,
                       options: FollowOptions | None = None, *, mode: str | None = None,
                       server_input_dir: str | None = None, server_output_dir: str | None = None) -> Path:
    """Continue the run recorded in ``run_dir``: ``mode`` ``exact``, ``weights`` or ``None`` (exact when the
    training state of the newest checkpoint is on the server, else weights)."""
    from lorawf.runs.engine import ending_with_done

    async with ending_with_done(reporter, settings) as tracker:
        return await _continue(settings, run_dir, tracker, options, mode, server_input_dir, server_output_dir)


async def _continue(settings: ServerSettings, run_dir: Path, reporter: Reporter, options: FollowOptions | None,
                    mode: str | None, server_input_dir: str | None, server_output_dir: str | None) -> Path:
    from lorawf.comfy.folders import learn_folders
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.fsutil import atomic_write_text
    from lorawf.net.http import ComfyClient
    from lorawf.net.schema_cache import load_server_schemas
    from lorawf.runs.engine import gate_workflow, submit_graph
    from lorawf.runs.pipeline import RunFollower
    from lorawf.runs.record import Segment, read_record, write_record
    from lorawf.workflow.continuation import (
        EXACT,
        MODES,
        WEIGHTS,
        build_continuation,
        continuation_modes,
        refusal,
    )
    from lorawf.workflow.io import dumps_workflow
    from lorawf.workflow.patch import find_roles

    if mode is not None and mode not in MODES:
        raise InputError(f"--mode {mode!r}: expected {' or '.join(MODES)}")
    record = read_record(run_dir)
    if record.outcome == "success":
        raise InputError(f"{run_dir}: the run succeeded; there is nothing to continue")
    recorded = _recorded_workflow(run_dir)
    schemas = bundled_schemas()
    roles = find_roles(recorded, schemas)  # the run's family: its Init and model-select nodes
    init_inputs = recorded[roles.init]["inputs"]
    why_not = None if mode is None else refusal(roles.family, mode, schemas)
    if why_not is not None:  # before asking the server anything
        raise InputError(f"--mode {mode}: {why_not}")
    modes = continuation_modes(roles.family, schemas)
    stem = f"{init_inputs.get('output_name')}_rank{init_inputs.get('network_dim')}_{init_inputs.get('save_dtype')}"
    segments = _segments(record, init_inputs)
    checkpoints = [int(s) for s in record.plan.get("checkpoint_steps") or []]

    async with ComfyClient(settings) as client:
        stats, folder_paths = await client.server_facts()
        folders = learn_folders(folder_paths, stats, server_input_dir, server_output_dir)
        queue = await client.get_queue()
        alive = {str(item[1]) for key in ("queue_running", "queue_pending") for item in queue.get(key) or []
                 if isinstance(item, list) and len(item) > 1}
        for segment in segments:
            if segment.prompt_id in alive:
                raise InputError(f"prompt {segment.prompt_id} of this run is still queued or running on "
                                 f"{client.where}; `lorawf resume {run_dir}` follows it to its end")
        found = await _newest_checkpoint(client, folders, segments, checkpoints, stem)
        if found is None:
            raise InputError(f"{run_dir}: no checkpoint of this run is on {client.where} (none was reached, or "
                             "the files were removed); start it again with `lorawf run`")
        step, where_found, lora_path, has_state = found
        chosen = mode or (EXACT if has_state and EXACT in modes else WEIGHTS)
        if chosen == EXACT and not has_state:
            raise InputError(f"no training state of step {step} on {client.where} (the run was not started with "
                             "--resumable); continue with --mode weights")
        source = lora_path.removesuffix(".safetensors") + "-state" if chosen == EXACT else lora_path
        index = len(segments) + 1
        base_dir = segments[0].output_dir
        cont = build_continuation(recorded, schemas, from_step=step, mode=chosen, source_path=source,
                                  output_dir=f"{base_dir}/segment-{index}")
        reporter(Notice(None, f"continuing from step {step} of {cont.to_step} ({chosen}): checkpoints at "
                              f"{', '.join(map(str, cont.checkpoints))}, into {cont.output_dir}"))
        for note in cont.notes:
            reporter(Notice(None, note, warning=True))
        server_schemas = await load_server_schemas(client, system_stats=stats)
        atomic_write_text(run_dir / segment_workflow_name(index), dumps_workflow(cont.workflow))
        await gate_workflow(client, cont.workflow, str(run_dir / segment_workflow_name(index)), reporter,
                            server_schemas)
        reached = step if where_found is segments[-1] else segments[-1].from_step  # what the last one kept
        closed = segments[:-1] + (replace(segments[-1], to_step=reached, outcome=record.outcome),)
        new = Segment(None, chosen, step, cont.to_step, cont.output_dir, note="; ".join(cont.notes) or None)
        record = replace(record, prompt_id=None, outcome="pending", error=None, segments=closed + (new,))
        write_record(run_dir, record, settings.secret_values())
        follower = RunFollower(client, run_dir, record, folders, False, step_offset=step)
        await submit_graph(client, cont.workflow, follower.observer(reporter),
                           replace(options or FollowOptions(), download=None), after_run=follower.after_run)
    return run_dir


# ------------------------------------------------------------------------------------------ automatic

#: How long ``--auto-continue`` waits for a server that went away, without ``--timeout``.
DEFAULT_COMEBACK_WAIT = 1800.0


class _HeldDone:
    """A reporter that holds back the ``done`` event, so a run that is continued automatically ends with one
    ``done`` (the last attempt's), not one per lost prompt."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.held: Event | None = None

    def __call__(self, event: Event, /) -> None:
        if isinstance(event, Done):
            self.held = event
        else:
            self.reporter(event)

    def release(self) -> None:
        if self.held is not None:
            self.reporter(self.held)
            self.held = None


async def wait_for_server(settings: ServerSettings, reporter: Reporter, limit: float) -> None:
    """Until the server answers ``/system_stats`` again (backoff; at most ``limit`` seconds)."""
    import asyncio

    from lorawf.comfy.follow import reconnect_delay
    from lorawf.errors import ServerError, ServerUnreachable
    from lorawf.net.http import ComfyClient

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    attempt = 0
    async with ComfyClient(settings) as client:
        while True:
            try:
                await client.system_stats()
                return
            except ServerError as exc:
                if loop.time() >= deadline:
                    raise ServerUnreachable(f"{client.where} did not come back within {limit:g} s ({exc})",
                                            hint="`lorawf continue RUN_DIR` carries on once it is back") from None
                if attempt == 0:
                    reporter(Notice(None, f"waiting for {client.where} to come back", warning=True))
            await asyncio.sleep(min(reconnect_delay(attempt), max(0.0, deadline - loop.time())))
            attempt += 1


async def auto_continue(settings: ServerSettings, reporter: Reporter, options: FollowOptions | None,
                        attempts: int, first: Callable[[Reporter], Awaitable[Path]],
                        run_dir: Path | None = None) -> Path:
    """Run ``first`` (a run or a continuation); while its prompt is lost, wait for the server to come back and
    continue the run, at most ``attempts`` times. Other failures end it as they are."""
    from lorawf.errors import PromptLost

    held = _HeldDone(reporter)
    limit = (options.timeout if options is not None and options.timeout else None) or DEFAULT_COMEBACK_WAIT
    try:
        try:
            return await first(held)
        except PromptLost as exc:
            lost: PromptLost = exc
        for attempt in range(1, attempts + 1):
            target = lost.run_dir or run_dir
            if target is None:
                raise lost
            held.held = None  # this lost prompt is not the end: the continuation's done will be
            reporter(Notice(None, f"{lost}; continuing from the newest checkpoint (attempt {attempt} of "
                                  f"{attempts})", warning=True))
            await wait_for_server(settings, reporter, limit)
            try:
                return await continue_run(settings, target, held, options)
            except PromptLost as exc:
                exc.run_dir = exc.run_dir or target
                lost = exc
        raise lost
    finally:
        held.release()


# ------------------------------------------------------------------------------------------ elsewhere


@dataclass(frozen=True)
class Carry:
    """A run moved to another server, continuing from one of its checkpoints that is on the local disk."""

    checkpoint: Path  # the local .safetensors of step ``step``
    step: int
    dataset_path: str  # the dataset's folder on the new server
    token: str
    images: int
    overrides: PlanOverrides
    sets: tuple[str, ...] = ()
    template: Path | None = None
    note: str = ""


def newest_local_checkpoint(run_dir: Path, checkpoints: list[int]) -> tuple[int, Path] | None:
    """The newest planned step checkpoint (not the last one) downloaded into ``run_dir``, if any."""
    from lorawf.runs.record import scan_files

    last = max(checkpoints) if checkpoints else 0
    found = [(f.step, run_dir / f.path) for f in scan_files(run_dir)
             if f.kind == "checkpoint" and f.step is not None and f.step in checkpoints and f.step < last]
    return max(found, key=lambda item: item[0]) if found else None


async def continue_elsewhere(settings: ServerSettings, run_dir: Path, reporter: Reporter, carry: Carry,
                             options: FollowOptions | None = None) -> Path:
    """Continue the run in ``run_dir`` on another server (its own is gone) from a checkpoint on the local disk.

    The checkpoint is uploaded into the new server's input folder and the next segment is the run's workflow
    built afresh for that server (its folders, the dataset already there), cut to the remaining blocks with
    the checkpoint as ``lora_path``: the *weights* mode of ``lorawf continue`` (approximate: the optimizer
    starts fresh), said as a warning and recorded in the segment."""
    from lorawf.comfy.folders import learn_folders
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.fsutil import atomic_write_text
    from lorawf.net.http import ComfyClient
    from lorawf.net.schema_cache import load_server_schemas
    from lorawf.runs.engine import ending_with_done, gate_workflow, submit_graph
    from lorawf.runs.pipeline import RunFollower
    from lorawf.runs.record import Segment, read_record, write_record
    from lorawf.workflow.build import build_workflow
    from lorawf.workflow.continuation import WEIGHTS, build_continuation
    from lorawf.workflow.io import dumps_workflow
    from lorawf.workflow.patch import PatchOptions, find_roles

    async with ending_with_done(reporter, settings) as tracker:
        record = read_record(run_dir)
        recorded = _recorded_workflow(run_dir)
        roles = find_roles(recorded, bundled_schemas())
        segments = _segments(record, recorded[roles.init]["inputs"])
        async with ComfyClient(settings) as client:
            stats, folder_paths = await client.server_facts()
            folders = learn_folders(folder_paths, stats, None, None)
            server_schemas = await load_server_schemas(client, system_stats=stats)
            schemas = bundled_schemas().merged(server_schemas)
            name = record.name
            built = build_workflow(carry.images, PatchOptions(
                carry.token, carry.dataset_path, f"{folders.output_dir}/lorawf/{name}", name, carry.sets,
                image_prefix=f"lorawf/{name}/validation"), carry.overrides, carry.template, schemas)
            subfolder = f"lorawf/carry/{name}"
            await client.upload(carry.checkpoint, carry.checkpoint.name, subfolder)
            index = len(segments) + 1
            cont = build_continuation(built.patch.workflow, schemas, from_step=carry.step, mode=WEIGHTS,
                                      source_path=f"{folders.input_dir}/{subfolder}/{carry.checkpoint.name}",
                                      output_dir=f"{folders.output_dir}/lorawf/{name}/segment-{index}")
            tracker(Notice(None, f"continuing from step {carry.step} of {cont.to_step} on {client.where} "
                                 f"(weights, from the local checkpoint {carry.checkpoint.name})"))
            for line in cont.notes:
                tracker(Notice(None, line, warning=True))
            path = run_dir / segment_workflow_name(index)
            atomic_write_text(path, dumps_workflow(cont.workflow))
            await gate_workflow(client, cont.workflow, str(path), tracker, server_schemas)
            closed = segments[:-1] + (replace(segments[-1], to_step=carry.step, outcome="lost"),)
            note = "; ".join(n for n in (carry.note, *cont.notes) if n) or None
            new = Segment(None, WEIGHTS, carry.step, cont.to_step, cont.output_dir, note=note)
            version = str((stats.get("system") or {}).get("comfyui_version") or "unknown")
            record = replace(record, prompt_id=None, outcome="pending", error=None, segments=closed + (new,),
                             server_url=settings.redacted_url, server_version=version)
            write_record(run_dir, record, settings.secret_values())
            follower = RunFollower(client, run_dir, record, folders, True, step_offset=carry.step)
            await submit_graph(client, cont.workflow, follower.observer(tracker),
                               replace(options or FollowOptions(), download=None), after_run=follower.after_run)
    return run_dir
