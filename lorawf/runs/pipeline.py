"""``lorawf run``: from a local dataset folder to trained LoRA files on the user's disk.

dataset -> plan -> (upload) -> patch -> preflight -> submit -> events -> downloads -> run.json + contact sheet.

Each step is done by its own module; this one only sequences them and keeps the run record current, so a
crash at any point leaves a ``run.json`` that says how far the run got. Checkpoints reach the history through
the template's ``PreviewAny`` nodes (their server paths), and are fetched through ``/view`` because the
patched workflow writes them inside ComfyUI's output folder.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lorawf.comfy.events import Download, Event, Output, OutputFile, Started, WarningEvent
from lorawf.errors import LorawfError, UsageError
from lorawf.net.settings import ServerSettings
from lorawf.training.plan import PlanOverrides
from lorawf.workflow.patch import PatchOptions

Echo = Callable[[str], None]
Sink = Callable[[Event], None]


@dataclass(frozen=True)
class RunRequest:
    """Everything ``lorawf run`` was asked to do."""

    token: str
    dataset: Path | None = None
    images: int | None = None
    overrides: PlanOverrides = field(default_factory=PlanOverrides)
    template: Path | None = None
    sets: tuple[str, ...] = ()
    upload: bool = False
    server_dataset_path: str | None = None
    server_input_dir: str | None = None
    server_output_dir: str | None = None
    download_root: Path = Path("lorawf-runs")
    download_as_you_go: bool = False
    preflight: bool = True
    name: str | None = None


def local_target(run_dir: Path, ref: OutputFile, role: str) -> Path:
    """Where a run's output goes locally: ``checkpoints/``, ``validation/`` or ``other/<subfolder>/``."""
    from lorawf.safepaths import check_component, local_path

    name = check_component(ref.filename, "filename")
    if role in ("checkpoint", "final_lora"):
        return run_dir / "checkpoints" / name
    if role == "validation":
        return run_dir / "validation" / name
    return local_path(run_dir / "other", ref.subfolder, ref.filename, ref.type)


class OutputCollector:
    """Watches the event stream: remembers every output file and maps checkpoint paths to ``/view`` refs."""

    def __init__(self, folders: Any) -> None:
        self.folders = folders
        self.refs: dict[tuple[str, str, str], tuple[OutputFile, str]] = {}
        self.started_at: Any = None
        self.warnings: list[Event] = []  # shown when the run ends (the observer cannot print)
        self.new_checkpoints: queue.Queue[tuple[OutputFile, str] | None] = queue.Queue()

    def __call__(self, event: Event) -> None:
        from lorawf.comfy.folders import relative_to_output
        from lorawf.timefmt import utc_now

        if isinstance(event, Started) and self.started_at is None:
            self.started_at = utc_now()
        if not isinstance(event, Output):
            return
        if event.filename is not None:
            ref = OutputFile(event.node, event.key, event.filename, event.subfolder or "", event.type or "output")
            self._add(ref, event.role)
        elif event.role == "checkpoint" and event.text:
            path = event.text.strip()
            mapped = relative_to_output(path, self.folders)
            if mapped is None:
                self.warnings.append(WarningEvent(event.prompt_id, "checkpoint_outside_output",
                                        f"checkpoint {path} is outside the server's output folder; not downloadable"))
                return
            subfolder, filename = mapped
            role = "checkpoint" if "-step" in filename else "final_lora"
            ref = OutputFile(event.node, event.key, filename, subfolder, "output")
            if self._add(ref, role):
                self.new_checkpoints.put((ref, role))

    def _add(self, ref: OutputFile, role: str) -> bool:
        key = (ref.type, ref.subfolder, ref.filename)
        if key in self.refs:
            return False
        self.refs[key] = (ref, role)
        return True


class EagerDownloader:
    """``--download-as-you-go``: fetch each checkpoint as soon as it is reported, in a background thread."""

    def __init__(self, settings: ServerSettings, run_dir: Path, collector: OutputCollector) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.collector = collector
        self.events: list[Event] = []
        self.done: set[tuple[str, str, str]] = set()  # (type, subfolder, filename) already on disk
        self.thread = threading.Thread(target=self._work, name="lorawf-download", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.collector.new_checkpoints.get()
            if item is None:
                return
            ref, role = item
            try:
                self.events.append(asyncio.run(_download_one(self.settings, self.run_dir, ref, role)))
                self.done.add((ref.type, ref.subfolder, ref.filename))
            except (LorawfError, OSError) as exc:  # retried in the final sweep
                self.events.append(WarningEvent(None, "download_retry", f"{ref.filename}: {exc}"))

    def stop(self) -> None:
        self.collector.new_checkpoints.put(None)
        self.thread.join()


async def _download_one(settings: ServerSettings, run_dir: Path, ref: OutputFile, role: str) -> Download:
    from lorawf.net.download import download_file
    from lorawf.net.http import ComfyClient

    target = local_target(run_dir, ref, role)
    async with ComfyClient(settings) as client:
        return await download_file(client, ref, run_dir, "", local=target)


async def download_all(settings: ServerSettings, run_dir: Path, refs: Sequence[tuple[OutputFile, str]],
                       sink: Sink, prompt_id: str | None) -> list[str]:
    """Fetch every output into its place under ``run_dir``; one problem line per file that failed."""
    from lorawf.net.download import download_outputs

    roles = {(ref.type, ref.subfolder, ref.filename): role for ref, role in refs}
    return await download_outputs(
        settings, [ref for ref, _role in refs], run_dir, sink, prompt_id or "",
        local_for=lambda ref: local_target(run_dir, ref, roles[(ref.type, ref.subfolder, ref.filename)]),
    )


def execute_run(settings: ServerSettings, request: RunRequest, submit: Any, echo: Echo,
                json_echo: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Run the whole pipeline; returns the local run folder. Raises a LorawfError on any failure,
    after downloading what exists and writing ``run.json`` with the outcome."""
    from lorawf.cli.server import preflight_or_warn, run_async, run_submission
    from lorawf.comfy.folders import learn_folders
    from lorawf.fsutil import atomic_write_text
    from lorawf.net.http import ComfyClient, fetch_server_facts
    from lorawf.net.upload_plan import dataset_digest, dataset_files
    from lorawf.runs.record import RunRecord, Timings, write_record
    from lorawf.runs.sheet import prompts_from_workflow
    from lorawf.safepaths import file_stem
    from lorawf.timefmt import utc_now
    from lorawf.training.dataset import scan_dataset
    from lorawf.training.naming import unique_run_name
    from lorawf.workflow.build import build_workflow

    created = utc_now()
    # 1. the dataset, locally (or only its size)
    scan = None
    if request.images is not None:
        images = request.images
    elif request.dataset is not None:
        scan = scan_dataset(request.dataset)
        images = scan.image_count
        echo(scan.summary())
    else:
        raise UsageError("give a DATASET folder or --images N")
    if request.upload and scan is None:
        raise UsageError("--upload needs a local DATASET folder (without --images)")
    if not request.upload and not request.server_dataset_path:
        raise UsageError("say where the images are on the GPU host: --upload, or --server-dataset-path PATH")

    # 2. what the server tells about itself
    stats, folder_paths = run_async(lambda: fetch_server_facts(settings))
    folders = learn_folders(folder_paths, stats, request.server_input_dir, request.server_output_dir)
    version = str((stats.get("system") or {}).get("comfyui_version") or "unknown")

    name = request.name or unique_run_name(request.token, images, created,
                                           lambda n: (request.download_root / n).exists())
    run_dir = request.download_root / name
    run_dir.mkdir(parents=True, exist_ok=False)

    # 3. the dataset, on the server
    dataset_path = request.server_dataset_path
    if request.upload:
        assert scan is not None
        from lorawf.net.upload import UploadProgress, upload_dataset

        files = dataset_files(scan)
        subfolder = f"lorawf/datasets/{file_stem(request.token)}-{images}img-{dataset_digest(files)}"

        def progress(p: UploadProgress) -> None:
            if json_echo is not None:
                json_echo({"event": "upload", "file": p.name, "status": p.status, "files_done": p.files_done,
                           "files_total": p.files_total, "bytes_done": p.bytes_done, "bytes_total": p.bytes_total})
            else:
                echo(f"upload {p.files_done}/{p.files_total} files, {p.bytes_done}/{p.bytes_total} bytes: "
                     f"{p.name} {p.status}")

        async def send() -> Any:
            async with ComfyClient(settings) as client:
                return await upload_dataset(client, files, subfolder, progress)

        report = run_async(send)
        echo(f"dataset on the server: input/{subfolder} ({len(report.sent)} sent, {len(report.skipped)} "
             "already there)")
        dataset_path = f"{folders.input_dir}/{subfolder}"

    # 4. plan and patch: checkpoints and validation images inside ComfyUI's output folder, per run
    options = PatchOptions(
        request.token, dataset_path, f"{folders.output_dir}/lorawf/{name}", name, request.sets,
        image_prefix=f"lorawf/{name}/validation",
    )
    built = build_workflow(images, options, request.overrides, request.template)
    echo(f"plan: {built.plan.max_train_steps} steps, checkpoints at "
         f"{', '.join(map(str, built.plan.checkpoint_steps))}")
    for advice in built.plan.advice:
        if advice.severity != "info":
            echo(f"warning: {advice.message}")
    atomic_write_text(run_dir / "workflow.json", built.text)
    if request.preflight:
        from lorawf.net.schema_cache import server_schemas

        preflight_or_warn(settings, built.patch.workflow, f"{run_dir / 'workflow.json'}",
                          server_schemas(settings, system_stats=stats))

    record = RunRecord(
        name=name, plan=built.plan.to_dict(), patch=built.patch.operations, template=str(built.template_path),
        server_url=settings.redacted_url, timings=Timings(created=created), server_version=version,
        prompts=tuple(prompts_from_workflow(built.patch.workflow)),
    )
    secrets = settings.secret_values()
    write_record(run_dir, record, secrets)

    # 5. submit, follow, download
    follower = RunFollower(settings, run_dir, record, folders, request.download_as_you_go)
    run_submission(settings, built.patch.workflow, follower.options(submit))
    return run_dir


class RunFollower:
    """Keeps a run folder current while its prompt runs: the record (prompt id, timings, outcome), the
    outputs (downloaded as they come with ``as_you_go``, all of them at the end) and the contact sheet."""

    def __init__(self, settings: ServerSettings, run_dir: Path, record: Any, folders: Any,
                 as_you_go: bool) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.record = record
        self.secrets = settings.secret_values()
        self.collector = OutputCollector(folders)
        self.eager = EagerDownloader(settings, run_dir, self.collector) if as_you_go else None

    def options(self, submit: Any) -> Any:
        """``submit`` with this follower as observer and after-run step (and no plain ``--download``)."""
        return replace(submit, download=None, observer=self.observe, after_run=self.after_run)

    def observe(self, event: Event) -> None:
        from lorawf.runs.record import write_record
        from lorawf.timefmt import utc_now

        if self.record.prompt_id is None and event.prompt_id:
            self.record = replace(self.record, prompt_id=event.prompt_id,
                                  timings=replace(self.record.timings, submitted=utc_now()))
            write_record(self.run_dir, self.record, self.secrets)  # a crash from here on still names the prompt
        self.collector(event)

    def after_run(self, result: Any, error: LorawfError | None, sink: Sink) -> list[str]:
        from lorawf.cli.server import run_async
        from lorawf.runs.record import outcome_from_event, scan_files, write_record
        from lorawf.runs.sheet import make_run_sheet
        from lorawf.timefmt import utc_now

        for event in self.collector.warnings:
            sink(event)
        if self.eager is not None:
            self.eager.stop()
            for event in self.eager.events:
                sink(event)
        fetched = self.eager.done if self.eager is not None else set()
        refs = [(ref, role) for key, (ref, role) in self.collector.refs.items() if key not in fetched]
        problems = run_async(lambda: download_all(self.settings, self.run_dir, refs, sink,
                                                       result.prompt_id if result else None)) if refs else []
        rec = self.record
        prompt_id = result.prompt_id if result is not None else getattr(error, "prompt_id", None)
        outcome = outcome_from_event(result.outcome if result is not None else _outcome_of(error))
        reason = str(error) if error is not None else (result.message if outcome != "success" else "")
        rec = replace(rec, prompt_id=prompt_id or rec.prompt_id, outcome=outcome,
                      error=reason.splitlines()[0] if reason else None,
                      timings=replace(rec.timings, submitted=rec.timings.submitted or rec.timings.created,
                                      started=self.collector.started_at or rec.timings.started,
                                      finished=utc_now()))
        try:
            make_run_sheet(self.run_dir, record=rec)
        except LorawfError as exc:
            sink(WarningEvent(prompt_id, "sheet_failed", str(exc)))
        rec = replace(rec, files=tuple(scan_files(self.run_dir)))
        write_record(self.run_dir, rec, self.secrets)
        self.record = rec
        return problems


def resume_run(settings: ServerSettings, run_dir: Path, submit: Any, server_input_dir: str | None = None,
               server_output_dir: str | None = None, as_you_go: bool = False) -> Path:
    """Re-attach to a recorded run: follow its prompt to the end (or read its end from history), download
    every output still missing, redraw the sheet and update ``run.json``."""
    from lorawf.cli.server import run_async, run_watch
    from lorawf.comfy.folders import learn_folders
    from lorawf.errors import InputError
    from lorawf.net.http import fetch_server_facts
    from lorawf.runs.record import read_record

    record = read_record(run_dir)
    if not record.prompt_id:
        raise InputError(f"{run_dir}: run.json names no prompt: the run was never submitted; start it again "
                         "with `lorawf run`")
    stats, folder_paths = run_async(lambda: fetch_server_facts(settings))
    folders = learn_folders(folder_paths, stats, server_input_dir, server_output_dir)
    follower = RunFollower(settings, run_dir, record, folders, as_you_go)
    run_watch(settings, record.prompt_id, follower.options(submit))
    return run_dir


def _outcome_of(error: LorawfError | None) -> str:
    from lorawf.cli.server import outcome_of

    return "success" if error is None else outcome_of(error)
