"""The hosts of a sweep: what each ComfyUI server can run, what is on its queue, how fast it trains.

One :class:`Host` per ``[[server]]``. It learns the server's facts (folders, version, node schemas) when it
first answers and again when it comes back, reads its queue (``GET /queue``: our prompts and other users'),
measures its training speed from our runs' progress, and puts each dataset on it once (the upload is
content-addressed, so a dataset already there costs one small request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.comfy.dispatch import HostView
from lorawf.comfy.events import Event, Notice
from lorawf.errors import LorawfError, ServerError
from lorawf.net.settings import ServerSettings
from lorawf.printable import printable

if TYPE_CHECKING:
    from lorawf.comfy.folders import ServerFolders
    from lorawf.comfy.preflight import Problem
    from lorawf.comfy.schema import SchemaSet
    from lorawf.training.sweep import RunSpec, ServerSpec


@dataclass
class Speed:
    """Training steps and the seconds they took on one host, summed over our runs."""

    steps: float = 0.0
    seconds: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.steps / self.seconds if self.steps > 0 and self.seconds > 0 else None


class RunMeter:
    """A run's training progress as seen in its events: the step and when the first steps were seen."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def sample(self, now: float, step: int) -> None:
        if self.first is None or step < self.first[1]:
            self.first = (now, step)
        self.last = (now, step)

    @property
    def measured(self) -> tuple[float, float]:
        """(steps, seconds) between the first and the last sample."""
        if self.first is None or self.last is None:
            return 0.0, 0.0
        return float(self.last[1] - self.first[1]), self.last[0] - self.first[0]


class Host:
    """One ComfyUI server of a sweep and what lorawf knows about it."""

    def __init__(self, spec: ServerSpec, settings: ServerSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.name = spec.name
        self.up = False
        self.answered = False  # has it ever answered (its facts are known)?
        self.reason: str | None = None
        self.version: str | None = None
        self.folders: ServerFolders | None = None
        self.schemas: SchemaSet | None = None
        self.stats: dict[str, Any] = {}
        self.queued_ids: set[str] = set()  # every prompt id on its queue at the last look
        self.foreign = 0
        self.speed = Speed()
        self.failures = 0
        self.next_probe = 0.0
        self.datasets: dict[Path, asyncio.Task[str]] = {}
        self.capable: dict[str, str | None] = {}  # run name -> None (can run it) or why not

    @property
    def where(self) -> str:
        return f"{self.name} ({self.settings.redacted_url})"

    def view(self, ours: int, backlog_steps: float, live_rates: Speed) -> HostView:
        total = Speed(self.speed.steps + live_rates.steps, self.speed.seconds + live_rates.seconds)
        return HostView(self.name, self.up and self.folders is not None, self.spec.slots, ours, backlog_steps,
                        self.foreign, total.rate)

    async def learn(self) -> None:
        """The server's facts: folders, version, node schemas (cached per server and version)."""
        from lorawf.comfy.folders import learn_folders
        from lorawf.net.http import ComfyClient
        from lorawf.net.schema_cache import load_server_schemas

        async with ComfyClient(self.settings) as client:
            stats, folder_paths = await client.server_facts()
            self.folders = learn_folders(folder_paths, stats, None, None)
            self.version = str((stats.get("system") or {}).get("comfyui_version") or "unknown")
            self.schemas = await load_server_schemas(client, system_stats=stats)
            self.stats = stats
        self.answered = True
        self.capable.clear()  # a server that came back may have other nodes or models

    async def refresh_schemas(self) -> None:
        """Ask ``/object_info`` again (a node pack installed without a version change)."""
        from lorawf.net.http import ComfyClient
        from lorawf.net.schema_cache import load_server_schemas

        async with ComfyClient(self.settings) as client:
            self.schemas = await load_server_schemas(client, refresh=True, system_stats=self.stats or None)
        self.capable.clear()

    async def read_queue(self) -> dict[str, Any]:
        from lorawf.net.http import ComfyClient

        async with ComfyClient(self.settings, timeout=10.0) as client:
            return await client.get_queue()

    def note_queue(self, queue: dict[str, Any], ours: set[str]) -> None:
        ids = {str(item[1]) for key in ("queue_running", "queue_pending") for item in queue.get(key) or []
               if isinstance(item, list) and len(item) > 1}
        self.queued_ids = ids
        self.foreign = len(ids - ours)

    def check(self, spec: RunSpec, template: Path | None) -> str | None:
        """Why this host cannot run ``spec`` (its nodes or model files), or ``None`` when it can. Pure once
        the facts are known: the sweep's workflow is built for this host and preflighted against its schemas."""
        if spec.name in self.capable:
            return self.capable[spec.name]
        assert self.folders is not None and self.schemas is not None
        from lorawf.comfy.preflight import preflight
        from lorawf.comfy.schema import bundled_schemas
        from lorawf.workflow.build import build_workflow
        from lorawf.workflow.patch import PatchOptions

        options = PatchOptions(spec.dataset.token, f"{self.folders.input_dir}/lorawf/datasets/check",
                               f"{self.folders.output_dir}/lorawf/{spec.name}", spec.name, spec.sets,
                               image_prefix=f"lorawf/{spec.name}/validation")
        try:
            built = build_workflow(spec.dataset.images, options, spec.plan_overrides(), template,
                                   bundled_schemas().merged(self.schemas))
            reason = capability_problem(preflight(built.patch.workflow, self.schemas))
        except LorawfError as exc:
            reason = str(exc).splitlines()[0]
        self.capable[spec.name] = reason
        return reason

    def mark_down(self, reason: str, now: float) -> bool:
        """Stop placing work here; returns whether it was up (the caller reports the change)."""
        from lorawf.comfy.follow import reconnect_delay

        was_up = self.up
        self.up = False
        self.reason = reason
        self.next_probe = now + reconnect_delay(self.failures)
        self.failures += 1
        return was_up

    async def dataset_path(self, token: str, folder: Path, report: Callable[[Event], None]) -> str:
        """The dataset's folder on this server, uploading it the first time a run here needs it; concurrent
        runs of the same dataset wait for the one upload."""
        task = self.datasets.get(folder)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(self._upload(token, folder, report))
            self.datasets[folder] = task
        return await asyncio.shield(task)

    async def _upload(self, token: str, folder: Path, report: Callable[[Event], None]) -> str:
        from lorawf.net.http import ComfyClient
        from lorawf.net.upload import upload_dataset
        from lorawf.runs.pipeline import dataset_upload
        from lorawf.training.dataset import scan_dataset

        assert self.folders is not None
        files, subfolder = dataset_upload(token, scan_dataset(folder))
        async with ComfyClient(self.settings) as client:
            result = await upload_dataset(client, files, subfolder, report)
        report(Notice(None, f"dataset on {self.name}: input/{subfolder} ({len(result.sent)} sent, "
                            f"{len(result.skipped)} already there)"))
        return f"{self.folders.input_dir}/{subfolder}"


def capability_problem(problems: list[Problem]) -> str | None:
    """One line on why a host cannot run a workflow: the node classes it lacks (a missing node pack), else
    the first problems the server would reject (a model file not in its folder...); ``None`` if none."""
    from lorawf.comfy.preflight import SILENT_TYPES

    doomed = [p for p in problems if p.type not in SILENT_TYPES]
    if not doomed:
        return None
    missing = sorted({p.class_type for p in doomed if p.class_type and "does not exist on the server" in p.message})
    if missing:
        shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        return f"missing node types {shown}: install the node pack that provides them"
    lines = [f"{p.where()}: " + (f"{p.input} {printable(repr(p.value))}: " if p.input else "") + p.message
             for p in doomed]
    return "; ".join(lines[:2]) + (f" (+{len(lines) - 2} more)" if len(lines) > 2 else "")


def is_answering_error(exc: BaseException) -> bool:
    """A failed look at a host that says it is not answering (rather than a bug here)."""
    return isinstance(exc, (ServerError, OSError, asyncio.TimeoutError))


def monotonic() -> float:
    return time.monotonic()
