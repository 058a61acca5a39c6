"""Downloading outputs through ``/view``: flat memory, resumable ``.part`` files, never an overwrite."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lorawf.comfy.events import (
    Download,
    OutputFile,
    WarningEvent,
)
from lorawf.errors import (
    LorawfError,
    ProtocolError,
    ServerUnreachable,
)
from lorawf.fsutil import sha256_file
from lorawf.net import bulk_get
from lorawf.net.api import USER_AGENT, Reply
from lorawf.net.http import ComfyClient, Sink
from lorawf.net.limits import DOWNLOAD_JOBS
from lorawf.net.tasks import run_bounded
from lorawf.safepaths import UnsafePath, free_name, is_within, local_path, partial_path

#: Tries per output file; each retry resumes the partial file.
DOWNLOAD_ATTEMPTS = 4



def _same_content(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def _place(part: Path, final: Path) -> tuple[Path, str]:
    """Move a complete download to ``final`` without ever overwriting a different existing file."""
    for _ in range(100):
        if final.exists():
            if _same_content(final, part):
                part.unlink()
                return final, "same"
            final = free_name(final, lambda p: p.exists())
        try:
            os.link(part, final)  # fails if the name appeared meanwhile: no silent overwrite
        except FileExistsError:
            continue
        except OSError:
            if final.exists():
                continue
            os.replace(part, final)
            return final, "saved"
        part.unlink()
        return final, "saved"
    raise OSError(f"cannot find a free name for {final}")


async def download_file(client: ComfyClient, ref: OutputFile, dest: Path, prompt_id: str,
                        local: Path | None = None) -> Download:
    """Stream one output via ``/view`` into ``dest`` (flat memory; resumable ``.part``; no overwrite).

    ``local`` (inside ``dest``) overrides the default local path ``dest/<subfolder>/<filename>``.
    """
    final = local if local is not None else local_path(dest, ref.subfolder, ref.filename, ref.type)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not is_within(final.parent.resolve(), Path(dest).resolve()):
        raise UnsafePath(f"{ref.subfolder!r} leads outside {dest} (symlink)")
    part = partial_path(final)
    tag_file = part.with_name(part.name + ".etag")
    offset = part.stat().st_size if part.exists() else 0
    headers: dict[str, str] = {}
    if offset and tag_file.exists():
        headers = {"Range": f"bytes={offset}-", "If-Range": tag_file.read_text(encoding="utf-8").strip()}
    params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
    what = f"GET /view {ref.filename!r}"
    status = "saved"
    try:
        bulk = await _bulk_download(client, params, headers, part, tag_file, offset, what)
    except bulk_get.Unsupported:
        bulk = None
    except bulk_get.RangeMismatch as exc:
        _start_over(part, tag_file)
        raise ProtocolError(f"{what}: cannot resume ({exc}); starting the file again") from None
    if bulk is not None:
        status, expected, written = bulk
    else:
        status, expected, written = await _httpx_download(client, params, headers, part, tag_file, offset, what)
    if expected is not None and expected.isdigit() and written != int(expected):
        raise ProtocolError(f"{what}: download incomplete ({written} of {expected} bytes); run again to resume")
    tag_file.unlink(missing_ok=True)
    placed, placed_status = _place(part, final)
    return Download(prompt_id, ref.filename, ref.subfolder, ref.type, str(placed), placed.stat().st_size,
                    "same" if placed_status == "same" else status)


def _complete_part(content_range: str | None, part: Path, tag_file: Path, offset: int,
                   what: str) -> tuple[str, str | None, int]:
    """A resume answered 416 (nothing left to send): the partial file already holds the whole file when the
    server's size (``Content-Range: bytes */SIZE``, after its ``If-Range`` matched our ETag) is its size, as
    when a run was stopped between the last byte and putting the file in place; else it starts again."""
    size = (content_range or "").strip().removeprefix("bytes */")
    if size.isdigit() and int(size) == offset:
        return "resumed", None, offset
    _start_over(part, tag_file)
    raise ProtocolError(f"{what}: cannot resume (the server has {size or 'an unknown size'} bytes, the partial "
                        f"file {offset}); starting the file again")


def _start_over(part: Path, tag_file: Path) -> None:
    """Drop a partial file that cannot be resumed, so the next attempt downloads it whole."""
    part.unlink(missing_ok=True)
    tag_file.unlink(missing_ok=True)


def _remember_etag(tag_file: Path, etag: str | None) -> None:
    """Keep the ETag beside a fresh ``.part`` file, so an interrupted download can be resumed safely."""
    if etag:
        tag_file.write_text(etag, encoding="utf-8")
    else:
        tag_file.unlink(missing_ok=True)


async def _bulk_download(client: ComfyClient, params: dict[str, str], headers: dict[str, str], part: Path,
                         tag_file: Path, offset: int, what: str) -> tuple[str, str | None, int]:
    """The fast path (:mod:`lorawf.net.bulk_get`, in a worker thread); raises ``Unsupported`` to fall back."""
    stop = bulk_get.Stop()
    all_headers = {"User-Agent": USER_AGENT, **client.settings.request_headers(), **headers}
    def on_head(head: bulk_get.Head) -> None:
        if not (head.status == 206 and headers):
            _remember_etag(tag_file, head.headers.get("etag"))

    try:
        head, written = await asyncio.to_thread(
            bulk_get.get_to_file, client.settings.base_url, "/view", params, all_headers, client.ssl_context,
            str(part), offset if headers else 0, stop, 60.0, on_head)
    except asyncio.CancelledError:
        stop.set()  # the worker thread stops at its next chunk
        raise
    except bulk_get.Interrupted as exc:
        raise ServerUnreachable(client.settings.secrets.scrub(f"cannot reach {client.where} ({what}): {exc}")) from None
    if head.status == 416 and headers:
        return _complete_part(head.headers.get("content-range"), part, tag_file, offset, what)
    if head.status not in (200, 206):
        client.check_status(Reply(head.status, head.headers, head.body_start), what)
    resumed = head.status == 206 and bool(headers)
    return ("resumed" if resumed else "saved"), head.headers.get("content-length"), written


async def _httpx_download(client: ComfyClient, params: dict[str, str], headers: dict[str, str], part: Path,
                          tag_file: Path, offset: int, what: str) -> tuple[str, str | None, int]:
    """The general path (proxies, chunked answers): httpx streaming, flat memory."""
    status = "saved"
    with client.mapped(what):
        async with client.http.stream("GET", "/view", params=params, headers=headers) as resp:
            if resp.status_code == 416 and headers:
                return _complete_part(resp.headers.get("content-range"), part, tag_file, offset, what)
            client.check_response(resp, what)
            if resp.status_code == 206 and headers:
                start = bulk_get.range_start(resp.headers.get("Content-Range"))
                if start != offset:
                    _start_over(part, tag_file)
                    raise ProtocolError(f"{what}: cannot resume (the server sent bytes from "
                                        f"{start if start is not None else 'an unknown offset'}, the partial "
                                        f"file ends at {offset}); starting the file again")
                mode, status = "ab", "resumed"
            else:
                mode = "wb"
                _remember_etag(tag_file, resp.headers.get("ETag"))
            expected = resp.headers.get("Content-Length")
            written = 0
            with open(part, mode) as handle:  # noqa: ASYNC230 - local disk, chunked: fine for a CLI
                async for chunk in resp.aiter_bytes():  # as received: a cut keeps what arrived
                    handle.write(chunk)
                    written += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
    return status, expected, written


async def download_outputs(client: ComfyClient, files: Sequence[OutputFile], dest: Path, sink: Sink,
                           prompt_id: str, *, local_for: Callable[[OutputFile], Path] | None = None,
                           attempts: int = DOWNLOAD_ATTEMPTS, jobs: int = DOWNLOAD_JOBS) -> list[str]:
    """Download every file, ``jobs`` at a time; returns one problem line per file that could not be saved
    (never raises for one). Events come in the order files finish.

    ``local_for`` picks each file's local path inside ``dest`` (default ``dest/<subfolder>/<filename>``).
    A connection cut mid-file is retried up to ``attempts`` times, resuming the ``.part`` file with ``Range``.
    Files bound for the same local path go one after the other: a ``.part`` file has one writer.
    """
    problems: list[str] = []

    async def one(ref: OutputFile) -> None:
        try:
            local = local_for(ref) if local_for is not None else None
            for attempt in range(attempts):
                try:
                    sink(await download_file(client, ref, dest, prompt_id, local=local))
                    break
                except (ServerUnreachable, ProtocolError) as exc:
                    if attempt + 1 == attempts:
                        raise
                    sink(WarningEvent(prompt_id, "download_retry", f"{ref.filename}: {exc}; resuming"))
                    await asyncio.sleep(0.5 * (attempt + 1))
        except UnsafePath as exc:
            problems.append(f"unsafe output name from server refused: {exc}")
            sink(WarningEvent(prompt_id, "unsafe_filename", f"not downloaded: {exc}"))
        except (LorawfError, OSError) as exc:
            text = str(exc) if isinstance(exc, LorawfError) else f"{ref.filename}: {exc.strerror or exc}"
            problems.append(text)
            sink(WarningEvent(prompt_id, "download_failed", text))

    async def in_turn(refs: list[OutputFile]) -> None:
        for ref in refs:
            await one(ref)

    await run_bounded(_by_local_path(files, local_for).values(), in_turn, jobs)
    return problems


def _by_local_path(files: Sequence[OutputFile], local_for: Callable[[OutputFile], Path] | None,
                   ) -> dict[object, list[OutputFile]]:
    """The files grouped by where they land (in their order); a name ``local_for`` refuses is a group alone."""
    groups: dict[object, list[OutputFile]] = {}
    for index, ref in enumerate(files):
        key: object = (ref.type, ref.subfolder, ref.filename)
        if local_for is not None:
            try:
                key = local_for(ref)
            except (ValueError, OSError):
                key = ("refused", index)  # reported by its own download attempt
        groups.setdefault(key, []).append(ref)
    return groups
