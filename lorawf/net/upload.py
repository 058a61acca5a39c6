"""Uploading a dataset to the server's input folder, skipping what is already there.

Names were checked by :mod:`lorawf.net.upload_plan`; this module only moves bytes through the client and
verifies that every file arrived whole. A manifest (name -> size, sha256) is written last, so an interrupted
upload never leaves a manifest that claims files which are not there.

Why it is shaped like this (measured over a 50 ms round-trip link, docs/bench.md): one file after another
with a size check after each paid two round trips per file, 1.5x the time of curl sending the same files one
by one. Now up to ``jobs`` files are in flight at once, and each file's size check is sent as soon as its
upload is answered, beside the next uploads instead of before them: the check costs no upload slot.

Two uploads of the same dataset to the same server (two terminals, a sweep) must not trip over each other:
the server writes an upload in place (``open(path, "wb")``), so a size check can see another client's write
half done. On one machine a lock file serialises them (the second then finds everything there and skips
it); from other machines a short size that grows is waited for before it counts as incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawf.comfy.events import Event, Notice, Upload
from lorawf.errors import ProtocolError
from lorawf.net.http import ComfyClient
from lorawf.net.limits import DEFAULT_UPLOAD_JOBS, MAX_UPLOAD_JOBS
from lorawf.net.tasks import run_all, run_bounded
from lorawf.net.upload_plan import MANIFEST_NAME, UploadFile, files_to_send, manifest

#: Pauses before re-reading a size that is short: another client's write of the same file may be in flight.
RECHECK_DELAYS = (0.05, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class UploadReport:
    """What an upload did."""

    subfolder: str
    sent: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_sent: int


def check_jobs(jobs: int) -> int:
    """``jobs`` if it is a sensible number of parallel uploads, else :class:`ValueError` naming the range."""
    if not 1 <= jobs <= MAX_UPLOAD_JOBS:
        raise ValueError(f"upload jobs must be between 1 and {MAX_UPLOAD_JOBS}, not {jobs}")
    return jobs


async def upload_dataset(client: ComfyClient, files: list[UploadFile], subfolder: str,
                         progress: Callable[[Event], None] = lambda p: None, *,
                         jobs: int = DEFAULT_UPLOAD_JOBS, lock_dir: Path | None = None) -> UploadReport:
    """Upload ``files`` into ``input/<subfolder>``, ``jobs`` at a time; files already there whole are skipped.

    ``progress`` gets one event per file as it is found there (skipped, first) or confirmed on the server
    (sent, in the order they finish), and a notice if another upload of the same folder is waited for.
    Cancelling stops every transfer; the manifest is then not written.
    """
    check_jobs(jobs)

    def waiting() -> None:
        progress(Notice(None, f"waiting for another lorawf process uploading the same dataset to "
                              f"{client.where} ({subfolder})"))

    async with same_dataset_lock(client.settings.redacted_url, subfolder, lock_dir, waiting):
        remote = await _read_manifest(client, subfolder)
        sizes = await _remote_sizes(client, files, subfolder, jobs) if remote is not None else None
        to_send = {f.name for f in files_to_send(files, remote, sizes)}
        uploader = _Uploader(client, subfolder, progress, len(files), sum(f.size for f in files if f.name in to_send))
        for f in files:
            if f.name not in to_send:
                uploader.skipped(f)
        await uploader.send_all([f for f in files if f.name in to_send], jobs)
        if uploader.sent or remote is None:
            await _write_manifest(client, files, subfolder)
    return UploadReport(subfolder, tuple(uploader.sent), tuple(uploader.skipped_names), uploader.bytes_done)


class _Uploader:
    """Sends files with bounded concurrency, checks each, and reports progress in the order files finish."""

    def __init__(self, client: ComfyClient, subfolder: str, progress: Callable[[Event], None],
                 total_files: int, total_bytes: int) -> None:
        self.client = client
        self.subfolder = subfolder
        self.progress = progress
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.bytes_done = 0
        self.sent: list[str] = []
        self.skipped_names: list[str] = []

    def skipped(self, f: UploadFile) -> None:
        self.files_done += 1
        self.skipped_names.append(f.name)
        self.progress(Upload(None, f.name, "skipped", self.files_done, self.total_files,
                             self.bytes_done, self.total_bytes))

    async def send_all(self, files: list[UploadFile], jobs: int) -> None:
        slots = asyncio.Semaphore(jobs)
        await run_all(self._send(f, slots) for f in files)  # the first failure stops the others

    async def _send(self, f: UploadFile, slots: asyncio.Semaphore) -> None:
        async with slots:
            await self.client.upload(f.local, f.name, self.subfolder)
        await self._confirm(f)  # outside the slot: the next upload starts while this check travels
        self.files_done += 1
        self.bytes_done += f.size
        self.sent.append(f.name)
        self.progress(Upload(None, f.name, "sent", self.files_done, self.total_files,
                             self.bytes_done, self.total_bytes))

    async def _confirm(self, f: UploadFile) -> None:
        """The server holds ``f`` whole; a short size is read again while it grows (another writer)."""
        size = await self.client.remote_size(f.name, self.subfolder)
        for delay in RECHECK_DELAYS:
            if size == f.size:
                return
            await asyncio.sleep(delay)
            size = await self.client.remote_size(f.name, self.subfolder)
        if size != f.size:
            raise ProtocolError(f"upload of {f.local} is incomplete on the server ({size} of {f.size} bytes); "
                                "run again")


async def _read_manifest(client: ComfyClient, subfolder: str) -> dict[str, Any] | None:
    raw = await client.read_small(MANIFEST_NAME, subfolder)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # unreadable manifest: send everything again
    return data if isinstance(data, dict) else None


async def _remote_sizes(client: ComfyClient, files: Iterable[UploadFile], subfolder: str,
                        jobs: int) -> dict[str, int]:
    """Sizes the server reports for ``files`` (absent ones left out), ``2 * jobs`` small requests at a time."""
    sizes: dict[str, int] = {}

    async def one(f: UploadFile) -> None:
        size = await client.remote_size(f.name, subfolder)
        if size is not None:
            sizes[f.name] = size

    await run_bounded(files, one, 2 * jobs)
    return sizes


async def _write_manifest(client: ComfyClient, files: list[UploadFile], subfolder: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MANIFEST_NAME
        path.write_text(json.dumps(manifest(files), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        await client.upload(path, MANIFEST_NAME, subfolder)


# ------------------------------------------------------------------------------------------ the lock


def lock_path(server: str, subfolder: str, lock_dir: Path | None = None) -> Path:
    """The lock file of one dataset folder on one server (redacted URL: no secret in a file name)."""
    from lorawf.net.schema_cache import cache_root

    digest = hashlib.sha256(f"{server}\n{subfolder}".encode()).hexdigest()[:16]
    return (lock_dir or cache_root() / "locks") / f"upload-{digest}.lock"


@contextlib.asynccontextmanager
async def same_dataset_lock(server: str, subfolder: str, lock_dir: Path | None = None,
                            waiting: Callable[[], None] = lambda: None) -> AsyncIterator[None]:
    """Hold an exclusive lock on (server, subfolder) for this machine; without a usable lock file, go on.

    ``flock`` locks end with the process, so a killed upload never leaves a stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock, the size re-checks still guard against false alarms
        yield
        return
    path = lock_path(server, subfolder, lock_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    waiting()
                    told = True
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock
