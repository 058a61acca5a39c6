"""``lorawf run`` and ``lorawf resume``: from a local dataset folder to trained LoRA files on the user's disk.

dataset -> plan -> (upload) -> patch -> preflight -> submit -> events -> downloads -> run.json + contact sheet.

Each step is done by its own module; this one only sequences them, on one client and one event loop, and
keeps the run record current, so a crash at any point leaves a ``run.json`` that says how far the run got.
Checkpoints reach the history through the template's ``PreviewAny`` nodes (their server paths), and are
fetched through ``/view`` because the patched workflow writes them inside ComfyUI's output folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.comfy.events import Event, Notice, Output, OutputFile, Started, WarningEvent
from lorawf.errors import LorawfError, UsageError
from lorawf.net.limits import DEFAULT_UPLOAD_JOBS
from lorawf.net.settings import ServerSettings
from lorawf.runs.engine import FollowOptions, Reporter, submit_graph, watch_on
from lorawf.training.plan import PlanOverrides
from lorawf.workflow.patch import PatchOptions

if TYPE_CHECKING:
    from datetime import datetime

    from lorawf.comfy.folders import ServerFolders
    from lorawf.net.http import ComfyClient
    from lorawf.net.prompts import RunResult
    from lorawf.net.upload_plan import UploadFile
    from lorawf.runs.record import RunRecord, Timings
    from lorawf.training.dataset import DatasetScan


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
    upload_jobs: int = DEFAULT_UPLOAD_JOBS  # files in flight at once
    server_dataset_path: str | None = None
    server_input_dir: str | None = None
    server_output_dir: str | None = None
    download_root: Path = Path("lorawf-runs")
    download_as_you_go: bool = False
    preflight: bool = True
    name: str | None = None
    resumable: bool = False  # save the training state with every checkpoint (lorawf continue --mode exact)
    model: str | None = None  # --model: the base-model family (None: flux, or the family --template trains)
    trainer: str = "fluxtrainer"  # "native": run by lorawf/runs/native.py, not by this module


def local_target(run_dir: Path, ref: OutputFile, role: str, step_offset: int = 0) -> Path:
    """Where a run's output goes locally: ``checkpoints/``, ``validation/`` or ``other/<subfolder>/``.

    ``step_offset``: a continued segment's trainer counts from 0 again (docs/fluxtrainer.md §5.6), so its
    ``-stepNNNNN`` checkpoints are named by the run's global step here.
    """
    from lorawf.runs.record import CHECKPOINT_RE
    from lorawf.safepaths import check_component, local_path

    name = check_component(ref.filename, "filename")
    if role == "checkpoint" and step_offset:
        name = CHECKPOINT_RE.sub(lambda m: f"-step{int(m.group(1)) + step_offset:05d}.safetensors", name)
    if role in ("checkpoint", "final_lora"):
        return run_dir / "checkpoints" / name
    if role == "validation":
        return run_dir / "validation" / name
    return local_path(run_dir / "other", ref.subfolder, ref.filename, ref.type)


class OutputCollector:
    """Watches the event stream: remembers every output file and maps checkpoint paths to ``/view`` refs."""

    def __init__(self, folders: ServerFolders, step_offset: int = 0) -> None:
        self.folders = folders
        self.step_offset = step_offset
        self.refs: dict[tuple[str, str, str], tuple[OutputFile, str]] = {}
        self.started_at: datetime | None = None
        #: checkpoints for :class:`EagerDownloader`; ``None`` tells it to stop
        self.new_checkpoints: asyncio.Queue[tuple[OutputFile, str] | None] = asyncio.Queue()

    def __call__(self, event: Event) -> list[Event]:
        """Take note of ``event``; returns the warnings it gives rise to."""
        from lorawf.comfy.folders import relative_to_output
        from lorawf.timefmt import utc_now

        if isinstance(event, Started) and self.started_at is None:
            self.started_at = utc_now()
        if not isinstance(event, Output):
            return []
        if event.filename is not None:
            ref = OutputFile(event.node, event.key, event.filename, event.subfolder or "", event.type or "output")
            self._add(ref, event.role)
        elif event.role == "checkpoint" and event.text:
            path = event.text.strip()
            mapped = relative_to_output(path, self.folders)
            if mapped is None:
                return [WarningEvent(event.prompt_id, "checkpoint_outside_output",
                                     f"checkpoint {path} is outside the server's output folder; not downloadable")]
            subfolder, filename = mapped
            role = "checkpoint" if "-step" in filename else "final_lora"
            ref = OutputFile(event.node, event.key, filename, subfolder, "output")
            if self._add(ref, role):
                self.new_checkpoints.put_nowait((ref, role))
        return []

    def _add(self, ref: OutputFile, role: str) -> bool:
        key = (ref.type, ref.subfolder, ref.filename)
        if key in self.refs:
            return False
        self.refs[key] = (ref, role)
        return True


class EagerDownloader:
    """``--download-as-you-go``: fetch each checkpoint as soon as it is reported, on the run's own client."""

    def __init__(self, client: ComfyClient, run_dir: Path, collector: OutputCollector) -> None:
        self.client = client
        self.run_dir = run_dir
        self.collector = collector
        self.events: list[Event] = []
        self.done: set[tuple[str, str, str]] = set()  # (type, subfolder, filename) already on disk
        self.task = asyncio.ensure_future(self._work())

    async def _work(self) -> None:
        from lorawf.net.download import download_file

        while True:
            item = await self.collector.new_checkpoints.get()
            if item is None:
                return
            ref, role = item
            try:
                target = local_target(self.run_dir, ref, role, self.collector.step_offset)
                self.events.append(await download_file(self.client, ref, self.run_dir, "", local=target))
                self.done.add((ref.type, ref.subfolder, ref.filename))
            except (LorawfError, OSError) as exc:  # retried in the final sweep
                self.events.append(WarningEvent(None, "download_retry", f"{ref.filename}: {exc}"))
            except ValueError as exc:  # an unsafe name: the final sweep reports it
                self.events.append(WarningEvent(None, "download_retry", f"{ref.filename}: {exc}"))

    async def stop(self) -> None:
        """Finish the checkpoints already reported, then stop."""
        self.collector.new_checkpoints.put_nowait(None)
        await self.task


async def download_all(client: ComfyClient, run_dir: Path, refs: Sequence[tuple[OutputFile, str]],
                       reporter: Reporter, prompt_id: str | None, step_offset: int = 0) -> list[str]:
    """Fetch every output into its place under ``run_dir``; one problem line per file that failed."""
    from lorawf.net.download import download_outputs

    roles = {(ref.type, ref.subfolder, ref.filename): role for ref, role in refs}
    return await download_outputs(
        client, [ref for ref, _role in refs], run_dir, reporter, prompt_id or "",
        local_for=lambda ref: local_target(run_dir, ref, roles[(ref.type, ref.subfolder, ref.filename)],
                                           step_offset),
    )


async def run(settings: ServerSettings, request: RunRequest, reporter: Reporter,
              options: FollowOptions | None = None) -> Path:
    """Run the whole pipeline; returns the local run folder.

    Every option is checked before anything is created, uploaded or queued; from the moment the run folder
    exists it holds a ``run.json`` that tells the truth about the outcome. Raises a LorawfError on any
    failure (after the ``done`` event, the downloads of what exists, and the record).
    """
    from lorawf.runs.engine import ending_with_done

    async with ending_with_done(reporter, settings) as tracker:
        return await _run(settings, request, tracker, options or FollowOptions())


async def _run(settings: ServerSettings, request: RunRequest, reporter: Reporter, options: FollowOptions) -> Path:
    from lorawf.comfy.folders import learn_folders
    from lorawf.comfy.schema import bundled_schemas
    from lorawf.fsutil import atomic_write_text
    from lorawf.net.http import ComfyClient
    from lorawf.net.schema_cache import load_server_schemas
    from lorawf.runs.engine import gate_workflow
    from lorawf.runs.record import RunRecord, Timings, write_record
    from lorawf.runs.sheet import prompts_from_workflow
    from lorawf.timefmt import utc_now
    from lorawf.training.naming import unique_run_name
    from lorawf.workflow.build import build_workflow

    created = utc_now()
    # 1. everything that can be checked offline: the dataset (or its size), the options, the name
    images, scan = request_dataset(request)
    placeholder = request.name or unique_run_name(request.token, images, created, lambda n: False)
    build_workflow(images, _patch_options(request, "/dataset", "/output", placeholder), request.overrides,
                   request.template, model=request.model)  # token, overrides, --set and template problems surface here
    if scan is not None:
        reporter(Notice(None, scan.summary()))

    async with ComfyClient(settings) as client:
        # 2. what the server tells about itself
        stats, folder_paths = await client.server_facts()
        folders = learn_folders(folder_paths, stats, request.server_input_dir, request.server_output_dir)
        version = str((stats.get("system") or {}).get("comfyui_version") or "unknown")

        # 3. the exact workflow, before anything is created: the dataset's server folder is known up front
        name = request.name or unique_run_name(request.token, images, created,
                                               lambda n: (request.download_root / n).exists())
        dataset_path = request.server_dataset_path
        files: list[UploadFile] = []
        subfolder = ""
        if request.upload:
            assert scan is not None
            files, subfolder = dataset_upload(request.token, scan)
            dataset_path = f"{folders.input_dir}/{subfolder}"
        assert dataset_path is not None
        # the server's own schemas check every node of the template, other packs' included
        server_schemas = await load_server_schemas(client, system_stats=stats) if request.preflight else None
        built = build_workflow(images, _patch_options(request, dataset_path, folders.output_dir, name),
                               request.overrides, request.template,
                               bundled_schemas().merged(server_schemas) if server_schemas is not None else None,
                               model=request.model)
        reporter(Notice(None, f"plan: {built.plan.max_train_steps} steps, checkpoints at "
                              f"{', '.join(map(str, built.plan.checkpoint_steps))}"))
        for advice in built.plan.advice:
            if advice.severity != "info":
                reporter(Notice(None, advice.message, warning=True))
        for note in built.patch.notes:
            reporter(Notice(None, f"template: {note}"))
        if request.resumable:
            reporter(Notice(None, resumable_cost(built.plan.network_dim, len(built.plan.checkpoint_steps),
                                                 _free_space(stats)), warning=True))
        if built.patch.unchecked:
            reporter(Notice(None, "not checked (no node schema; run with preflight to check them against the "
                                  f"server): {', '.join(built.patch.unchecked)}", warning=True))

        # 4. the run folder, with run.json from the first moment
        run_dir = request.download_root / name
        run_dir.mkdir(parents=True, exist_ok=False)
        record = RunRecord(
            name=name, plan=built.plan.to_dict(), patch=built.patch.operations, template=str(built.template_path),
            server_url=settings.redacted_url, timings=Timings(created=created), server_version=version,
            prompts=tuple(prompts_from_workflow(built.patch.workflow)),
        )
        write_record(run_dir, record, settings.secret_values())
        atomic_write_text(run_dir / "workflow.json", built.text)
        try:
            # 5. preflight before the upload: a workflow the server would refuse costs no transfer
            if request.preflight:
                await gate_workflow(client, built.patch.workflow, f"{run_dir / 'workflow.json'}", reporter,
                                    server_schemas)
            # 6. the dataset, on the server
            if request.upload:
                from lorawf.net.upload import upload_dataset

                report = await upload_dataset(client, files, subfolder, reporter, jobs=request.upload_jobs)
                reporter(Notice(None, f"dataset on the server: input/{subfolder} ({len(report.sent)} sent, "
                                      f"{len(report.skipped)} already there)"))
        except (LorawfError, asyncio.CancelledError) as exc:
            _record_failure(run_dir, record, exc, settings)
            raise

        # 7. submit, follow, download
        follower = RunFollower(client, run_dir, record, folders, request.download_as_you_go)
        await _naming_the_run(run_dir, submit_graph(client, built.patch.workflow, follower.observer(reporter),
                           replace(options, download=None), after_run=follower.after_run))
    return run_dir


def check_request(request: RunRequest) -> None:
    """What a run request gets wrong on its own, before any server is asked: where the images are, the name."""
    from lorawf.training.naming import check_run_name

    if request.upload and (request.dataset is None or request.images is not None):
        raise UsageError("--upload needs a local DATASET folder (without --images)")
    if request.dataset is None and request.images is None:
        raise UsageError("give a DATASET folder or --images N")
    if not request.upload and not request.server_dataset_path:
        raise UsageError("say where the images are on the GPU host: --upload, or --server-dataset-path PATH")
    if request.name is not None:
        check_run_name(request.name)


def request_dataset(request: RunRequest) -> tuple[int, DatasetScan | None]:
    """The image count (scanning the local DATASET, unless --images stands in), then :func:`check_request`."""
    from lorawf.training.dataset import scan_dataset

    scan = None
    if request.images is not None:
        images = request.images
    elif request.dataset is not None:
        scan = scan_dataset(request.dataset)
        images = scan.image_count
    else:
        raise UsageError("give a DATASET folder or --images N")
    check_request(request)
    return images, scan


def dataset_upload(token: str, scan: DatasetScan) -> tuple[list[UploadFile], str]:
    """The files of a dataset and the input subfolder they go to: named by their content, so the same
    images are sent once per server, whichever run (or sweep) sends them first."""
    from lorawf.net.upload_plan import dataset_digest, dataset_files
    from lorawf.safepaths import file_stem

    files = dataset_files(scan)
    return files, f"lorawf/datasets/{file_stem(token)}-{scan.image_count}img-{dataset_digest(files)}"


#: The training state of a rank-16 Flux LoRA with adamw8bit and fp32 gradients is about 460 MB, three
#: times the bf16 LoRA (docs/fluxtrainer.md §5.6, from the layer shapes); it grows with the rank.
STATE_BYTES_AT_RANK_16 = 460_000_000


def resumable_cost(network_dim: int, checkpoints: int, free: int | None) -> str:
    """The disk cost of ``--resumable``, said before anything is submitted."""
    each = STATE_BYTES_AT_RANK_16 * network_dim / 16
    total = each * checkpoints
    line = (f"--resumable: about {each / 1e9:.1f} GB of training state per checkpoint, {total / 1e9:.1f} GB for "
            f"{checkpoints} checkpoints, on the server (ComfyUI has no way to delete files: remove older "
            "*-state folders by hand once a newer one exists; each is complete on its own)")
    if free is not None:
        line += f"; the server reports {free / 1e9:.1f} GB free"
        if free < total:
            line += " (NOT ENOUGH for all of them)"
    return line


def _free_space(stats: dict[str, Any]) -> int | None:
    """Free disk space, if ``/system_stats`` tells it (ComfyUI 0.3.64 does not; some forks do)."""
    system = stats.get("system") if isinstance(stats, dict) else None
    value = system.get("disk_free") if isinstance(system, dict) else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


async def _naming_the_run(run_dir: Path, followed: Awaitable[object]) -> None:
    """A lost prompt says which run folder it belonged to, so ``--auto-continue`` can carry on there."""
    from lorawf.errors import PromptLost

    try:
        await followed
    except PromptLost as exc:
        exc.run_dir = run_dir
        raise


def _patch_options(request: RunRequest, dataset_path: str, output_dir: str, name: str) -> PatchOptions:
    """Checkpoints and validation images inside ComfyUI's output folder, one subfolder per run."""
    return PatchOptions(request.token, dataset_path, f"{output_dir}/lorawf/{name}", name, request.sets,
                        image_prefix=f"lorawf/{name}/validation", save_state=request.resumable)


def _record_failure(run_dir: Path, record: RunRecord, error: BaseException, settings: ServerSettings) -> None:
    """run.json after a failure before the prompt existed: cancelled or error, with the reason."""
    from lorawf.runs.record import scan_files, write_record
    from lorawf.timefmt import utc_now

    cancelled = isinstance(error, asyncio.CancelledError)
    reason = "cancelled before the prompt was queued" if cancelled else str(error).splitlines()[0]
    write_record(run_dir, replace(record, outcome="cancelled" if cancelled else "error",
                                  error=settings.secrets.scrub(reason),
                                  timings=replace(record.timings, finished=utc_now()),
                                  files=tuple(scan_files(run_dir))), settings.secret_values())


class RunFollower:
    """Keeps a run folder current while its prompt runs: the record (prompt id, timings, outcome), the
    outputs (downloaded as they come with ``as_you_go``, all of them at the end) and the contact sheet."""

    def __init__(self, client: ComfyClient, run_dir: Path, record: RunRecord, folders: ServerFolders,
                 as_you_go: bool, step_offset: int = 0) -> None:
        self.client = client
        self.run_dir = run_dir
        self.record = record
        self.secrets = client.settings.secret_values()
        self.collector = OutputCollector(folders, step_offset)
        self.eager = EagerDownloader(client, run_dir, self.collector) if as_you_go else None

    def observer(self, reporter: Reporter) -> Reporter:
        """A reporter that keeps the record and the outputs current, then passes every event on."""

        def observe(event: Event, /) -> None:
            news = self.observe(event)
            reporter(event)
            for extra in news:
                reporter(extra)

        return observe

    def observe(self, event: Event) -> list[Event]:
        from lorawf.runs.record import write_record
        from lorawf.timefmt import utc_now

        if self.record.prompt_id is None and event.prompt_id:
            self.record = replace(self.record, prompt_id=event.prompt_id,
                                  timings=replace(self.record.timings, submitted=utc_now()))
            write_record(self.run_dir, self.record, self.secrets)  # a crash from here on still names the prompt
        return self.collector(event)

    def _timings(self, result: RunResult | None) -> Timings:
        """Start and end from the server's own timestamps where it sent them (true after a resume too);
        else what was seen here, never replacing a time already recorded."""
        from lorawf.timefmt import from_epoch_ms, utc_now

        timings = self.record.timings
        state = result.state if result is not None else None
        started = timings.started or self.collector.started_at
        finished = utc_now()
        if state is not None and state.server_started_ms is not None and not self.record.segments:
            started = from_epoch_ms(state.server_started_ms)  # a continued run keeps its first start
        if state is not None and state.server_finished_ms is not None:
            finished = from_epoch_ms(state.server_finished_ms)
        return replace(timings, submitted=timings.submitted or timings.created, started=started, finished=finished)

    def _segment_start(self, result: RunResult | None) -> datetime | None:
        from lorawf.timefmt import from_epoch_ms

        state = result.state if result is not None else None
        if state is not None and state.server_started_ms is not None:
            return from_epoch_ms(state.server_started_ms)
        return self.collector.started_at

    async def after_run(self, result: RunResult | None, error: LorawfError | None,
                        reporter: Reporter) -> list[str]:
        from lorawf.errors import outcome_for
        from lorawf.fsutil import remove_empty_dirs
        from lorawf.runs.record import outcome_from_event, scan_files, write_record
        from lorawf.runs.sheet import make_run_sheet
        from lorawf.timefmt import utc_now

        try:
            if self.eager is not None:
                await self.eager.stop()
                for event in self.eager.events:
                    reporter(event)
            fetched = self.eager.done if self.eager is not None else set()
            refs = [(ref, role) for key, (ref, role) in self.collector.refs.items() if key not in fetched]
            problems = await download_all(self.client, self.run_dir, refs, reporter,
                                          result.prompt_id if result else None,
                                          self.collector.step_offset) if refs else []
        except asyncio.CancelledError:
            # Ctrl-C during the downloads: the record says so (and what resume does) before the exit
            if self.eager is not None:
                self.eager.task.cancel()
            remove_empty_dirs(self.run_dir)  # a folder made for a file that never came
            rec = replace(self.record, prompt_id=(result.prompt_id if result else None) or self.record.prompt_id,
                          outcome="cancelled",
                          error="cancelled during the downloads; `lorawf resume` fetches the rest",
                          timings=replace(self.record.timings, started=self.collector.started_at
                                          or self.record.timings.started, finished=utc_now()),
                          files=tuple(scan_files(self.run_dir)))
            write_record(self.run_dir, rec, self.secrets)
            self.record = rec
            raise
        rec = self.record
        prompt_id = result.prompt_id if result is not None else getattr(error, "prompt_id", None)
        outcome = outcome_from_event(result.outcome if result is not None
                                     else "success" if error is None else outcome_for(error))
        reason = str(error) if error is not None else (result.message if outcome != "success" and result else "")
        if problems and outcome == "success":  # trained, but not all of it is here: not a success yet
            outcome = "error"
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            reason = (f"{len(problems)} output file(s) not downloaded: {problems[0]}{more}; "
                      "`lorawf resume` fetches them")
        rec = replace(rec, prompt_id=prompt_id or rec.prompt_id, outcome=outcome,
                      error=reason.splitlines()[0] if reason else None,
                      timings=self._timings(result))
        try:
            make_run_sheet(self.run_dir, record=rec)
        except LorawfError as exc:
            reporter(WarningEvent(prompt_id, "sheet_failed", str(exc)))
        rec = replace(rec, files=tuple(scan_files(self.run_dir)))
        if rec.segments:  # a continued run: the segment that just ended says how it went
            last = rec.segments[-1]
            rec = replace(rec, segments=rec.segments[:-1] + (replace(
                last, prompt_id=rec.prompt_id, outcome=rec.outcome, started=self._segment_start(result),
                finished=rec.timings.finished),))
        write_record(self.run_dir, rec, self.secrets)
        self.record = rec
        return problems


async def resume(settings: ServerSettings, run_dir: Path, reporter: Reporter,
                 options: FollowOptions | None = None, *, server_input_dir: str | None = None,
                 server_output_dir: str | None = None, as_you_go: bool = False) -> Path:
    """Re-attach to a recorded run: follow its prompt to the end (or read its end from history), download
    every output still missing, redraw the sheet and update ``run.json``."""
    from lorawf.comfy.folders import learn_folders
    from lorawf.errors import InputError
    from lorawf.net.http import ComfyClient
    from lorawf.runs.record import read_record

    record = read_record(run_dir)
    if record.plan.get("trainer") == "native":
        raise InputError(f"{run_dir}: a native-trainer run (one prompt per checkpoint): `lorawf resume` cannot "
                         "carry its segments on yet; its finished checkpoints are in checkpoints/, start a new "
                         "run with `lorawf run --trainer native`")
    if not record.prompt_id:
        raise InputError(f"{run_dir}: run.json names no prompt: the run was never submitted; start it again "
                         "with `lorawf run`")
    async with ComfyClient(settings) as client:
        stats, folder_paths = await client.server_facts()
        folders = learn_folders(folder_paths, stats, server_input_dir, server_output_dir)
        # a continued run's newest segment counts its steps from its own start (docs/fluxtrainer.md §5.6)
        offset = record.segments[-1].from_step if record.segments else 0
        follower = RunFollower(client, run_dir, record, folders, as_you_go, step_offset=offset)
        await watch_on(client, record.prompt_id, follower.observer(reporter),
                       replace(options or FollowOptions(), download=None),
                       after_run=follower.after_run)
    return run_dir
