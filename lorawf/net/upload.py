"""Uploading a dataset to the server's input folder, skipping what is already there.

Names were checked by :mod:`lorawf.net.upload_plan`; this module only moves bytes through the client and
verifies that every file arrived whole. A manifest (name -> size, sha256) is written last, so an interrupted
upload never leaves a manifest that claims files which are not there.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorawf.comfy.events import Upload
from lorawf.errors import ProtocolError
from lorawf.net.http import ComfyClient
from lorawf.net.upload_plan import MANIFEST_NAME, UploadFile, files_to_send, manifest


@dataclass(frozen=True)
class UploadReport:
    """What an upload did."""

    subfolder: str
    sent: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_sent: int


async def upload_dataset(client: ComfyClient, files: list[UploadFile], subfolder: str,
                         progress: Callable[[Upload], None] = lambda p: None) -> UploadReport:
    """Upload ``files`` into ``input/<subfolder>``; files with the same name, size and hash are skipped."""
    raw = await client.read_small(MANIFEST_NAME, subfolder)
    remote = None
    if raw is not None:
        try:
            remote = json.loads(raw)
        except ValueError:
            remote = None  # unreadable manifest: send everything again
    sizes: dict[str, int] = {}
    if remote is not None:
        for f in files:
            size = await client.remote_size(f.name, subfolder)
            if size is not None:
                sizes[f.name] = size
    to_send = {f.name for f in files_to_send(files, remote, sizes)}
    total_bytes = sum(f.size for f in files if f.name in to_send)
    done_bytes = 0
    sent: list[str] = []
    skipped: list[str] = []
    for index, f in enumerate(files, start=1):
        if f.name in to_send:
            await client.upload(f.local, f.name, subfolder)
            size = await client.remote_size(f.name, subfolder)
            if size != f.size:
                raise ProtocolError(
                    f"upload of {f.local} is incomplete on the server ({size} of {f.size} bytes); run again"
                )
            done_bytes += f.size
            sent.append(f.name)
            progress(Upload(None, f.name, "sent", index, len(files), done_bytes, total_bytes))
        else:
            skipped.append(f.name)
            progress(Upload(None, f.name, "skipped", index, len(files), done_bytes, total_bytes))
    if sent or remote is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MANIFEST_NAME
            path.write_text(json.dumps(manifest(files), indent=2, sort_keys=True) + "\n", encoding="utf-8")
            await client.upload(path, MANIFEST_NAME, subfolder)
    return UploadReport(subfolder, tuple(sent), tuple(skipped), done_bytes)
