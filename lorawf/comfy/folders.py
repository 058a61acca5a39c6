"""Where things live on the GPU host: ComfyUI's input and output folders, and how server paths map to /view.

ComfyUI does not publish its input/output folders directly. They are learned from ``/system_stats`` (the
server's ``argv``: ``--base-directory``, ``--output-directory``, ``--input-directory``) and from
``/internal/folder_paths`` (which lists ``<output>/checkpoints`` beside ``models/checkpoints`` and the
``custom_nodes`` folder under the ComfyUI root). Pure functions only.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorawf.errors import InputError


@dataclass(frozen=True)
class ServerFolders:
    """ComfyUI's input and output folders on the server (absolute server paths)."""

    input_dir: str
    output_dir: str
    separator: str = "/"


def _norm(path: str) -> str:
    return path.replace("\\", "/").rstrip("/") or "/"


def _argv_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return str(argv[i + 1])
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def learn_folders(
    folder_paths: Mapping[str, Any] | None,
    system_stats: Mapping[str, Any] | None,
    input_override: str | None = None,
    output_override: str | None = None,
) -> ServerFolders:
    """Work out the input/output folders; overrides win; fail with what to pass when they cannot be learned."""
    argv: Sequence[str] = ()
    windows = False
    if isinstance(system_stats, Mapping):
        system = system_stats.get("system", {})
        if isinstance(system, Mapping):
            raw_argv = system.get("argv")
            argv = [str(a) for a in raw_argv] if isinstance(raw_argv, list) else ()
            windows = system.get("os") == "nt"
    base: str | None = None
    output: str | None = None
    fp = folder_paths if isinstance(folder_paths, Mapping) else {}
    custom = fp.get("custom_nodes")
    if isinstance(custom, list) and custom and isinstance(custom[0], str):
        base = posixpath.dirname(_norm(custom[0]))
    explicit_base = _argv_value(argv, "--base-directory")
    if explicit_base:
        base = _norm(explicit_base)
    for entries in fp.values():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str) and re.search(r"/checkpoints$", _norm(entry)) and "/models/" not in _norm(entry):
                output = posixpath.dirname(_norm(entry))
    output = _argv_value(argv, "--output-directory") or output or (f"{base}/output" if base else None)
    input_dir = _argv_value(argv, "--input-directory") or (f"{base}/input" if base else None)
    input_dir = input_override or input_dir
    output = output_override or output
    missing = [flag for flag, value in (("--server-input-dir", input_dir), ("--server-output-dir", output))
               if not value]
    if missing:
        raise InputError(
            "could not learn the server's "
            + " and ".join(m.removeprefix("--server-").removesuffix("-dir") for m in missing)
            + " folder from /internal/folder_paths and /system_stats",
            hint=f"pass {' and '.join(missing)} with the absolute path(s) on the GPU host",
        )
    assert input_dir is not None and output is not None
    return ServerFolders(_norm(input_dir), _norm(output), "\\" if windows else "/")


def relative_to_output(server_path: str, folders: ServerFolders) -> tuple[str, str] | None:
    """Map a server file path to ``(subfolder, filename)`` for ``/view?type=output``, or None if outside."""
    path = _norm(server_path)
    root = folders.output_dir
    if not path.startswith(root + "/"):
        return None
    rel = path[len(root) + 1:]
    subfolder, _, filename = rel.rpartition("/")
    if not filename or ".." in rel.split("/"):
        return None
    return subfolder, filename
