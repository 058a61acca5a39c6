"""``lorawf run --trainer native``: a LoRA from ComfyUI's own training nodes, one prompt per checkpoint segment.

dataset -> plan -> checks -> (upload) -> for each segment: build, preflight, submit, follow, find the saved
LoRA in the loras list, download it with the loss graph and validation images, record -> contact sheet.

Why one prompt per segment, and how a segment continues from the last, is in lorawf/workflow/native.py. The
run record holds one :class:`~lorawf.runs.record.Segment` per prompt, so a crash at any point leaves a
``run.json`` that says which checkpoints exist. ComfyUI 0.3.64's TrainLoraNode reports no progress over the
websocket (only its console's progress bar), so progress is counted in segments; where a server does send
progress for it, that is shown as well, and the run says which it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from lorawf.comfy.events import Event, Notice, OutputFile, Progress
from lorawf.errors import DatasetError, LorawfError, ProtocolError, RunFailed, ServerError, UsageError
from lorawf.net.settings import ServerSettings
from lorawf.runs.engine import FollowOptions, Reporter

if TYPE_CHECKING:
    from lorawf.comfy.folders import ServerFolders
    from lorawf.comfy.schema import SchemaSet
    from lorawf.net.http import ComfyClient
    from lorawf.net.prompts import RunResult
    from lorawf.runs.pipeline import RunRequest
    from lorawf.runs.record import RunRecord
    from lorawf.training.dataset import DatasetScan
    from lorawf.training.plan import TrainingPlan
    from lorawf.workflow.native import NativeRun

#: The core nodes a native run uses; a server without them cannot run it (ComfyUI before 0.3.41).
TRAINING_NODES = ("TrainLoraNode", "SaveLoRANode", "LoraModelLoader", "LoadImageTextSetFromFolderNode",
                  "LossGraphNode")
TEMPLATE = "native: ComfyUI's TrainLoraNode (built by lorawf, one prompt per checkpoint)"
#: How the training progress came, said once in run.json (the first segment's note).
PROGRESS_NOTES = {True: "native trainer; training progress from the server's websocket",
                  False: "native trainer; training progress counted in segments (the server sends none)"}
LOSS_NODE, VALIDATION_NODE = "22", "90"  # the segment graph's LossGraphNode and SaveImage (workflow/native.py)
#: What a native segment's continuation means for the result, said in run.json.
SEGMENT_NOTE = ("native: continues from the previous segment's LoRA file (existing_lora); the optimizer state "
                "starts again each segment")
#: Inputs the plan owns in a native segment: ``--set`` on them would desynchronise the plan from the run.
PLANNED = {("TrainLoraNode", n) for n in ("steps", "learning_rate", "rank", "batch_size", "existing_lora",
                                         "optimizer", "seed")} | {("SaveLoRANode", "prefix"),
                                                                   ("LoadImageTextSetFromFolderNode", "folder")}


@dataclass
class SegmentsDone:
    """What the finished segments left: the LoRA name to continue from, every output, how progress came."""

    last_lora: str | None = None
    files: list[OutputFile] = field(default_factory=list)
    server_progress: bool = False
    result: RunResult | None = None


def check_captions(scan: DatasetScan, token: str) -> list[str]:
    """Refuse a dataset the native loader would mis-read; return warnings about the trigger token.

    At 0.3.64, LoadImageTextSetFromFolderNode gives an image without a caption (or with an empty one) two
    conditionings, and TrainLoraNode then stops with "Number of positive conditions (X) does not match number
    of images (Y)" after the models are loaded: every image needs a caption with text.
    """
    from lorawf.training.dataset import caption_name

    empty: list[str] = list(scan.uncaptioned)
    without_token = 0
    for image in scan.captioned:
        try:
            text = (scan.path / caption_name(image)).read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            raise DatasetError(f"{scan.path / caption_name(image)}: cannot read: {exc.strerror or exc}") from None
        if not text:
            empty.append(image)
        elif token.lower() not in text.lower():
            without_token += 1
    if empty:
        empty.sort()
        more = f" (+{len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DatasetError(
            f"{scan.path / empty[0]}{more}: no caption text; ComfyUI's native dataset loader (0.3.64) then "
            "encodes two conditionings for the image and TrainLoraNode stops with 'Number of positive conditions "
            "does not match'. Give every image a .txt caption with text (the trigger token is enough), or use "
            "--trainer fluxtrainer")
    if without_token:
        return [(f"{without_token} of {scan.image_count} captions do not mention the trigger token {token!r}: the "
                "native trainer learns from the captions alone (FluxTrainer's class_tokens does not exist here)")]
    return []


def native_dataset_folder(dataset_path: str, folders: ServerFolders) -> str:
    """LoadImageTextSetFromFolderNode.folder for a server path: the loader reads folders under input/ only."""
    path, root = dataset_path.replace("\\", "/").rstrip("/"), folders.input_dir.replace("\\", "/").rstrip("/")
    if not path.startswith(root + "/"):
        raise UsageError(f"--server-dataset-path {dataset_path}: the native trainer reads datasets from folders "
                         f"under ComfyUI's input folder ({folders.input_dir}) only; move it there, or use --upload")
    return path[len(root) + 1:]


def check_server(schemas: SchemaSet, folder_paths: dict[str, Any] | None, folders: ServerFolders) -> None:
    """Can this server run a native run? Its training nodes, and a loras folder SaveLoRANode can write to."""
    from lorawf.errors import (
        PreflightRejected as CapabilityError,  # nothing is queued: the server would refuse
    )

    missing = [n for n in TRAINING_NODES if n not in schemas]
    if missing:
        raise CapabilityError(f"the server has no {', '.join(missing)}: ComfyUI's training nodes came with "
                              "0.3.41; update ComfyUI, or use --trainer fluxtrainer with the FluxTrainer nodes")
    loras = folder_paths.get("loras") if isinstance(folder_paths, dict) else None
    if isinstance(loras, list) and loras and isinstance(loras[0], list):  # [[paths], [extensions]]
        loras = loras[0]
    wanted = f"{folders.output_dir.rstrip('/')}/loras"
    if isinstance(loras, list) and not any(str(p).replace("\\", "/").rstrip("/") == wanted for p in loras):
        raise CapabilityError(f"the server's loras folders ({', '.join(map(str, loras))}) do not include {wanted}, "
                              "where SaveLoRANode writes: each checkpoint segment continues from that file. "
                              "Start ComfyUI with its default --output-directory handling, or add it in "
                              "extra_model_paths.yaml")


async def fresh_schema(client: ComfyClient, class_type: str) -> SchemaSet:
    """One node's schema as the server gives it now: its file and folder lists change during a run."""
    from lorawf.comfy.schema import parse_object_info

    info = await client.get_object(f"/object_info/{class_type}")
    schemas = parse_object_info(info, source=f"GET /object_info/{class_type}")
    if class_type not in schemas:
        raise ProtocolError(f"GET /object_info/{class_type}: the server no longer lists the node")
    return schemas


async def listed_choices(client: ComfyClient, class_type: str, input_name: str) -> tuple[list[str], SchemaSet]:
    """The choices of one list input, fresh, with the schema they came in."""
    schemas = await fresh_schema(client, class_type)
    spec = schemas[class_type].inputs.get(input_name)
    if spec is None or spec.choices is None:
        raise ProtocolError(f"GET /object_info/{class_type}: no {input_name} list")
    return [str(c) for c in spec.choices], schemas


def apply_native_sets(workflow: dict[str, Any], schemas: SchemaSet, sets: tuple[str, ...]) -> None:
    """``--set`` on a native segment: model files and sampler settings, never what the plan owns."""
    from lorawf.workflow.patch import apply_sets

    for item in sets:
        target, _, _value = item.partition("=")
        node, _, name = target.rpartition(".")
        cls = workflow.get(node, {}).get("class_type", node)
        if (cls, name) in PLANNED:
            raise UsageError(f"--set {item}: {cls}.{name} is planned by lorawf for every segment; use the planning "
                             "options (--steps, --interval, --lr, --dim, --batch) instead")
    apply_sets(workflow, schemas, sets)


def bundled_prompts(model: str, token: str) -> tuple[str, ...]:
    """The validation prompts of the family's bundled template, with the trigger token: one set of prompts
    for both trainers, so their contact sheets compare."""
    from lorawf.runs.sheet import prompts_from_workflow
    from lorawf.workflow.build import load_template
    from lorawf.workflow.patch import PLACEHOLDER
    from lorawf.workflow.templates import bundled_template_path

    _path, template = load_template(bundled_template_path(model))
    return tuple(p.replace(PLACEHOLDER, token) for p in prompts_from_workflow(template))


async def run_native(settings: ServerSettings, request: RunRequest, reporter: Reporter,
                     options: FollowOptions | None = None) -> Path:
    """Run every segment of a native run; returns the local run folder (see the module docstring)."""
    from lorawf.runs.engine import ending_with_done

    async with ending_with_done(reporter, settings) as tracker:
        return await _run(settings, request, tracker, options or FollowOptions())


async def _run(settings: ServerSettings, request: RunRequest, reporter: Reporter, options: FollowOptions) -> Path:
    from lorawf.comfy.folders import learn_folders
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.fsutil import atomic_write_text
    from lorawf.net.http import ComfyClient
    from lorawf.net.schema_cache import load_server_schemas
    from lorawf.runs.pipeline import dataset_upload, request_dataset
    from lorawf.runs.record import RunRecord, Timings, write_record
    from lorawf.timefmt import utc_now
    from lorawf.training.naming import unique_run_name
    from lorawf.training.plan import plan_training
    from lorawf.workflow.native import NativeRun, segment_workflow
    from lorawf.workflow.patch import validate_token

    created = utc_now()
    # 1. everything that can be checked offline
    if request.template is not None:
        raise UsageError("--template with --trainer native: the native trainer builds its own workflows from "
                         "ComfyUI's core nodes; drop --template (or use --trainer fluxtrainer)")
    if request.resumable:
        raise UsageError("--resumable with --trainer native: every native checkpoint already continues from the "
                         "last one's file; drop --resumable")
    token = validate_token(request.token)
    images, scan = request_dataset(request)
    plan = plan_training(images, request.overrides, model=request.model or "flux", trainer="native")
    warnings = check_captions(scan, token) if scan is not None else []
    prompts = bundled_prompts(plan.model, token)
    placeholder = request.name or unique_run_name(token, images, created, lambda n: False)
    offline = segment_workflow(NativeRun(placeholder, plan.model, "dataset", prompts), plan, 0, None)
    apply_native_sets(offline, bundled_schemas(), request.sets)  # --set problems surface before the server
    if scan is not None:
        reporter(Notice(None, scan.summary()))
    for warning in warnings:
        reporter(Notice(None, warning, warning=True))

    async with ComfyClient(settings) as client:
        # 2. what the server is and has
        stats, folder_paths = await client.server_facts()
        folders = learn_folders(folder_paths, stats, request.server_input_dir, request.server_output_dir)
        version = str((stats.get("system") or {}).get("comfyui_version") or "unknown")
        server_schemas = await load_server_schemas(client, system_stats=stats)
        schemas = bundled_schemas().merged(server_schemas)
        check_server(server_schemas, folder_paths, folders)  # its own nodes: the bundled snapshot has them all

        name = request.name or unique_run_name(token, images, created,
                                               lambda n: (request.download_root / n).exists())
        if request.upload:
            assert scan is not None
            files, subfolder = dataset_upload(token, scan)
            folder = subfolder
        else:
            assert request.server_dataset_path is not None
            files, folder = [], native_dataset_folder(request.server_dataset_path, folders)
        run = NativeRun(name, plan.model, folder, prompts, seed=0)
        first = segment_workflow(run, plan, 0, None)
        apply_native_sets(first, schemas, request.sets)
        segments = len(plan.checkpoint_steps)
        reporter(Notice(None, f"plan: {plan.max_train_steps} steps in {segments} prompts (native trainer, "
                              f"{plan.model}), checkpoints at {', '.join(map(str, plan.checkpoint_steps))}"))
        for advice in plan.advice:
            if advice.severity != "info":
                reporter(Notice(None, advice.message, warning=True))

        # 3. the run folder, with run.json from the first moment
        run_dir = request.download_root / name
        run_dir.mkdir(parents=True, exist_ok=False)
        record = RunRecord(name=name, plan=plan.to_dict(), patch=[], template=TEMPLATE,
                           server_url=settings.redacted_url, timings=Timings(created=created),
                           server_version=version, prompts=prompts)
        write_record(run_dir, record, settings.secret_values())
        atomic_write_text(run_dir / "workflow.json", _dumps(first))
        tracked = _Recorder(run_dir, record, settings)
        try:
            # 4. preflight (the folder is checked once it is there), then the dataset
            await _gate(first, schemas, run_dir / "workflow.json", reporter, skip_folder=request.upload)
            if request.upload:
                from lorawf.net.upload import upload_dataset

                report = await upload_dataset(client, files, folder, reporter, jobs=request.upload_jobs)
                reporter(Notice(None, f"dataset on the server: input/{folder} ({len(report.sent)} sent, "
                                      f"{len(report.skipped)} already there)"))
                folders_listed, fresh = await listed_choices(client, "LoadImageTextSetFromFolderNode", "folder")
                if folder not in folders_listed:
                    raise ProtocolError(f"the dataset was uploaded to input/{folder}, but the server does not list "
                                        "that folder for LoadImageTextSetFromFolderNode")
                schemas = schemas.merged(fresh)
            # 5. the segments
            done = await _segments(client, run, plan, schemas, request.sets, tracked, reporter, options)
        except (LorawfError, asyncio.CancelledError) as exc:
            await tracked.fail(exc)
            raise
        await tracked.finish(reporter)
        assert done.result is not None
        from lorawf.runs.engine import done_event

        reporter(done_event(done.result.prompt_id, replace(done.result, files=done.files), None, settings))
    return run_dir


async def _gate(workflow: dict[str, Any], schemas: SchemaSet, path: Path, reporter: Reporter, *,
                skip_folder: bool = False) -> None:
    """The preflight of one segment; the dataset folder is not asked for before the upload creates it (the
    server's own check of the posted prompt covers it then)."""
    from lorawf.comfy.preflight import gate

    not_yet = frozenset({("LoadImageTextSetFromFolderNode", "folder")}) if skip_folder else frozenset()
    for problem in gate(workflow, schemas, str(path), not_yet):
        reporter(Notice(None, problem.render(str(path)), warning=True))


def _dumps(workflow: dict[str, Any]) -> str:
    from lorawf.workflow.io import dumps_workflow

    return dumps_workflow(workflow)


class _Recorder:
    """Keeps run.json true while the segments run: one Segment per prompt, the files, the outcome."""

    def __init__(self, run_dir: Path, record: RunRecord, settings: ServerSettings) -> None:
        self.run_dir = run_dir
        self.record = record
        self.settings = settings

    def write(self, record: RunRecord) -> None:
        from lorawf.runs.record import scan_files, write_record

        self.record = replace(record, files=tuple(scan_files(self.run_dir)))
        write_record(self.run_dir, self.record, self.settings.secret_values())

    def start_segment(self, prompt_id: str | None, start: int, end: int, output_dir: str) -> None:
        from lorawf.runs.record import Segment
        from lorawf.timefmt import utc_now

        mode = "initial" if not self.record.segments else "weights"
        seg = Segment(prompt_id, mode, start, end, output_dir, started=utc_now(),
                      note=None if mode == "initial" else SEGMENT_NOTE)
        timings = self.record.timings
        if timings.submitted is None:
            timings = replace(timings, submitted=utc_now())
        self.write(replace(self.record, prompt_id=prompt_id, segments=(*self.record.segments, seg),
                           timings=timings))

    def note_first(self, note: str) -> None:
        first, *rest = self.record.segments
        self.write(replace(self.record, segments=(replace(first, note=note), *rest)))

    def end_segment(self, result: RunResult, outcome: str) -> None:
        from lorawf.timefmt import from_epoch_ms, utc_now

        state = result.state
        started = from_epoch_ms(state.server_started_ms) if state.server_started_ms is not None else None
        finished = from_epoch_ms(state.server_finished_ms) if state.server_finished_ms is not None else utc_now()
        last = self.record.segments[-1]
        seg = replace(last, prompt_id=result.prompt_id, outcome=outcome, started=started or last.started,
                      finished=finished)
        timings = self.record.timings
        if timings.started is None:
            timings = replace(timings, started=seg.started)
        self.write(replace(self.record, prompt_id=result.prompt_id,
                           segments=(*self.record.segments[:-1], seg), timings=timings))

    async def fail(self, error: BaseException) -> None:
        from lorawf.errors import outcome_for
        from lorawf.runs.record import outcome_from_event
        from lorawf.timefmt import utc_now

        cancelled = isinstance(error, asyncio.CancelledError)
        outcome = "cancelled" if cancelled else outcome_from_event(
            outcome_for(error) if isinstance(error, LorawfError) else "error")
        reason = "cancelled" if isinstance(error, asyncio.CancelledError) else str(error).splitlines()[0]
        segs = self.record.segments
        if segs and segs[-1].outcome == "pending":
            segs = (*segs[:-1], replace(segs[-1], outcome=outcome, finished=utc_now()))
        self.write(replace(self.record, outcome=outcome, error=self.settings.secrets.scrub(reason), segments=segs,
                           timings=replace(self.record.timings, finished=utc_now())))
        self.sheet(None)

    def sheet(self, reporter: Reporter | None) -> None:
        from lorawf.comfy.events import WarningEvent
        from lorawf.runs.sheet import make_run_sheet

        try:
            make_run_sheet(self.run_dir, record=self.record)
        except LorawfError as exc:
            if reporter is not None:
                reporter(WarningEvent(self.record.prompt_id, "sheet_failed", str(exc)))

    async def finish(self, reporter: Reporter) -> None:
        from lorawf.timefmt import utc_now

        finished = self.record.segments[-1].finished if self.record.segments else utc_now()
        self.record = replace(self.record, outcome="success", error=None,
                              timings=replace(self.record.timings, finished=finished))
        self.sheet(reporter)
        self.write(self.record)


async def _segments(client: ComfyClient, run: NativeRun, plan: TrainingPlan, schemas: SchemaSet,
                    sets: tuple[str, ...], recorder: _Recorder, reporter: Reporter,
                    options: FollowOptions) -> SegmentsDone:
    from lorawf.fsutil import atomic_write_text
    from lorawf.net.prompts import submit_and_wait
    from lorawf.workflow.native import saved_name, segment_bounds, segment_workflow

    done = SegmentsDone()
    count = len(plan.checkpoint_steps)
    output_dir = f"loras/lorawf/{run.name}"
    for index in range(count):
        start, end = segment_bounds(plan, index)
        workflow = segment_workflow(run, plan, index, done.last_lora)
        path = recorder.run_dir / "workflows" / f"segment-{index + 1:02d}.json"
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, _dumps(workflow))
        if index:  # the new file is in the fresh loras list, not in the cached schemas
            apply_native_sets(workflow, schemas, sets)
            _listed, fresh = await listed_choices(client, "TrainLoraNode", "existing_lora")
            await _gate(workflow, schemas.merged(fresh), path, reporter)
        reporter(Notice(None, f"segment {index + 1}/{count}: training steps {start + 1}-{end}"
                              + (f", continuing from {done.last_lora}" if done.last_lora else "")))
        recorder.start_segment(None, start, end, output_dir)

        def observe(event: Event, /) -> None:
            if isinstance(event, Progress) and event.node == "20":
                done.server_progress = True
            if event.prompt_id and recorder.record.segments[-1].prompt_id is None:
                last = recorder.record.segments[-1]
                recorder.write(replace(recorder.record, prompt_id=event.prompt_id,
                                       segments=(*recorder.record.segments[:-1],
                                                 replace(last, prompt_id=event.prompt_id))))
            reporter(event)

        result = await submit_and_wait(client, workflow, observe, options=options.wait_options(),
                                       extra_data=options.extra_data)
        done.result = result
        if result.outcome != "success":
            recorder.end_segment(result, "error" if result.outcome == "failed" else "cancelled")
            raise RunFailed(f"segment {index + 1}/{count} (steps {start + 1}-{end}): {result.message}")
        if index == 0:
            reporter(Notice(None, "progress: from the server's websocket" if done.server_progress else
                            "progress: counted in segments (this server sends no training progress for "
                            "TrainLoraNode; ComfyUI 0.3.64 prints it to its console only)"))
            recorder.note_first(PROGRESS_NOTES[done.server_progress])
        listed, _fresh = await listed_choices(client, "TrainLoraNode", "existing_lora")
        saved = saved_name(listed, run, end)
        if saved is None:
            recorder.end_segment(result, "error")
            raise ServerError(f"segment {index + 1}/{count}: SaveLoRANode's file for step {end} is not in the "
                              f"server's loras list (looked for {run.listed_prefix}{end}_steps_*); the next "
                              "segment could not continue from it")
        done.last_lora = saved
        problems = await _download_segment(client, recorder.run_dir, run, result, saved, end, index == count - 1,
                                           reporter)
        done.files.extend(result.files)
        done.files.append(_lora_ref(saved))
        recorder.end_segment(result, "success" if not problems else "error")
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ProtocolError(f"{len(problems)} output file(s) of segment {index + 1} not downloaded: "
                                f"{problems[0]}{more}")
        recorder.sheet(reporter)
    return done


def _lora_ref(listed: str) -> OutputFile:
    """The /view reference of a file listed as ``lorawf/<run>/<file>`` in the loras folder ``<output>/loras``."""
    path = PurePosixPath(listed.replace("\\", "/"))
    return OutputFile("21", "lora", path.name, str(PurePosixPath("loras") / path.parent), "output")


async def _download_segment(client: ComfyClient, run_dir: Path, run: NativeRun, result: RunResult, saved: str,
                            step: int, last: bool, reporter: Reporter) -> list[str]:
    """The segment's LoRA (as ``<run>-step<NNNNN>.safetensors``, the last also as ``<run>.safetensors``), its
    loss graph and its validation images."""
    import shutil

    from lorawf.net.download import download_outputs
    from lorawf.safepaths import check_component

    lora = _lora_ref(saved)
    local_lora = run_dir / "checkpoints" / f"{run.name}-step{step:05d}.safetensors"

    def local_for(ref: OutputFile) -> Path:
        if ref is lora:
            return local_lora
        if ref.node == LOSS_NODE:
            return run_dir / "loss" / f"loss_step{step:05d}.png"
        name = check_component(ref.filename, "filename")
        return run_dir / ("validation" if ref.node == VALIDATION_NODE else "other") / name

    problems = await download_outputs(client, [lora, *result.files], run_dir, reporter, result.prompt_id,
                                      local_for=local_for)
    if last and not problems:
        final = run_dir / "checkpoints" / f"{run.name}.safetensors"
        shutil.copyfile(local_lora, final.with_suffix(".part"))
        final.with_suffix(".part").replace(final)
    return problems


