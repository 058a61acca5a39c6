"""Node schemas of a live server, cached per server and ComfyUI version.

The cache lives in ``$XDG_CACHE_HOME/lorawf/object_info/`` (``~/.cache/...`` without the variable);
one JSON file per server (redacted URL: no credentials, no query) and ``comfyui_version``. Installing
a custom node pack does not change the version, so ``refresh=True`` (``--refresh-schemas``) refetches.
Networking is :mod:`lorawf.net.http`'s, through the caller's client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.comfy.schema import SchemaSet, parse_object_info
from lorawf.fsutil import atomic_write_text
from lorawf.net.settings import ServerSettings

if TYPE_CHECKING:  # httpx is imported only when a server is asked
    from lorawf.net.api import JsonApi

__all__ = ["cache_dir", "cache_path", "cache_root", "cached_server_schemas", "latest_path", "load_cached", "load_server_schemas", "server_schemas", "store"]

UNKNOWN_VERSION = "unknown"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/lorawf`` (or ``~/.cache/lorawf``): lorawf's cache (schemas, upload locks)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorawf"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/lorawf/object_info`` (or ``~/.cache/lorawf/object_info``)."""
    return cache_root(environ) / "object_info"


def _cache_file(parts: tuple[str, ...], suffix: str, environ: Mapping[str, str] | None) -> Path:
    """``<readable parts>-<digest of parts><suffix>`` in the cache folder: legible, and unique per parts."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)).strip("_")[:80]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return cache_dir(environ) / f"{readable}-{digest}{suffix}"


def cache_path(redacted_url: str, version: str, environ: Mapping[str, str] | None = None) -> Path:
    """The cache file for one server URL (already redacted) and ComfyUI version."""
    return _cache_file((redacted_url, version), ".json", environ)


def latest_path(redacted_url: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file naming the ComfyUI version last cached for a server (``submit`` trusts it: see
    :func:`cached_server_schemas`)."""
    return _cache_file((redacted_url,), ".latest", environ)


def load_cached(redacted_url: str, version: str, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The cached object_info, or ``None`` when absent or unreadable (a bad cache file is ignored)."""
    if version == UNKNOWN_VERSION:
        return None
    try:
        data = json.loads(cache_path(redacted_url, version, environ).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def store(redacted_url: str, version: str, data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path | None:
    """Save object_info to the cache; returns the path, or ``None`` when the cache cannot be written."""
    if version == UNKNOWN_VERSION:
        return None
    path = cache_path(redacted_url, version, environ)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, ensure_ascii=False))
        atomic_write_text(latest_path(redacted_url, environ), version + "\n")
    except OSError:
        return None
    return path


def cached_server_schemas(redacted_url: str, environ: Mapping[str, str] | None = None) -> SchemaSet | None:
    """The schemas last cached for this server, without asking it anything (``None`` without a cache).

    For a check whose findings the server would repeat anyway (``submit``'s preflight: the server validates
    the prompt itself): the caller asks the server (:func:`load_server_schemas` with ``refresh``) before it
    reports anything found with these, since a node pack installed or a model added since makes them stale.
    """
    try:
        version = latest_path(redacted_url, environ).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    data = load_cached(redacted_url, version, environ) if version else None
    if data is None:
        return None
    return parse_object_info(data, source=f"{redacted_url} (ComfyUI {version}, cached)")


def _version(stats: Any) -> str:
    system = stats.get("system") if isinstance(stats, Mapping) else None
    version = system.get("comfyui_version") if isinstance(system, Mapping) else None
    return str(version) if version else UNKNOWN_VERSION


async def load_server_schemas(client: JsonApi, *, refresh: bool = False,
                              system_stats: Mapping[str, Any] | None = None) -> SchemaSet:
    """Schemas of the client's server: ``/system_stats`` for the version, then the cache or ``/object_info``.

    ``system_stats``: the server's answer when the caller already has it (saves a request).
    """
    version = _version(system_stats if system_stats is not None else await client.system_stats())
    url = client.settings.redacted_url
    data = None if refresh else load_cached(url, version)
    if data is None:
        data = await client.object_info()
        store(url, version, data)
    return parse_object_info(data, source=f"{url} (ComfyUI {version})")


def server_schemas(settings: ServerSettings, *, refresh: bool = False) -> SchemaSet:
    """:func:`load_server_schemas` with a client and an event loop of its own (``validate``, ``convert``)."""
    import asyncio

    from lorawf.net.http import ComfyClient

    async def load() -> SchemaSet:
        async with ComfyClient(settings) as client:
            return await load_server_schemas(client, refresh=refresh)

    return asyncio.run(load())
