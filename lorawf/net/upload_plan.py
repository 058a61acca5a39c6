"""Planning a dataset upload: which local files go, under which checked names, and which are already there.

The server stores upload names literally (a recorded ``../escape.png`` landed outside its subfolder and a name
with ``/`` crashes the route), so only names checked here are ever sent. Pure apart from hashing local files.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawf.errors import DatasetError
from lorawf.fsutil import sha256_file
from lorawf.training.dataset import CAPTION_EXTENSION, DatasetScan

MANIFEST_NAME = "lorawf-manifest.json"
# httpx escapes '"' and '\' and control characters in multipart file names, and the server stores what it
# receives literally: such names would land under another name, so they are refused.
_FORBIDDEN = set('/\\"\x00') | {chr(c) for c in range(32)} | {"\x7f"}


@dataclass(frozen=True)
class UploadFile:
    """One local file to send, the name it will have on the server, its size and sha256."""

    local: Path
    name: str
    size: int
    sha256: str


def safe_upload_name(name: str, folder: Path) -> str:
    """Return the NFC-normalised ``name`` if it can be sent as-is, else raise :class:`DatasetError`."""
    normal = unicodedata.normalize("NFC", name)
    bad = sorted({c for c in normal if c in _FORBIDDEN or unicodedata.category(c) in ("Cc", "Cf")})
    if bad or normal in ("", ".", "..") or normal.startswith(".") or ".." in normal or normal != normal.strip():
        shown = ", ".join(repr(c) for c in bad) if bad else "a leading dot, '..' or surrounding spaces"
        raise DatasetError(
            f"{folder / name}: this file name cannot be uploaded safely ({shown}); rename the file"
        )
    if len(normal.encode("utf-8")) > 200:
        raise DatasetError(f"{folder / name}: file name longer than 200 bytes; rename the file")
    return normal



def dataset_files(scan: DatasetScan) -> list[UploadFile]:
    """Every training image and its caption file, with checked names; duplicates after normalisation fail."""
    names = list(scan.images) + [os.path.splitext(n)[0] + CAPTION_EXTENSION for n in scan.captioned]
    files: list[UploadFile] = []
    seen: dict[str, str] = {}
    for name in sorted(names):
        safe = safe_upload_name(name, scan.path)
        key = safe.casefold()  # a case-insensitive server filesystem would merge these
        if key in seen:
            raise DatasetError(f"{scan.path}: {name!r} and {seen[key]!r} would collide on the server; rename one")
        seen[key] = name
        size, digest = sha256_file(scan.path / name)
        files.append(UploadFile(scan.path / name, safe, size, digest))
    return files


def manifest(files: list[UploadFile]) -> dict[str, Any]:
    """The manifest stored beside the uploaded files: name -> size and sha256."""
    return {"schema": "lorawf.manifest/1", "files": {f.name: {"size": f.size, "sha256": f.sha256} for f in files}}


def dataset_digest(files: list[UploadFile]) -> str:
    """A short content hash of the whole dataset (names and bytes), for a stable server folder name."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f"{f.name}\0{f.size}\0{f.sha256}\n".encode())
    return digest.hexdigest()[:12]


def files_to_send(files: list[UploadFile], remote_manifest: Mapping[str, Any] | None,
                  remote_sizes: Mapping[str, int] | None = None) -> list[UploadFile]:
    """Local files whose name, size and hash are not already on the server.

    ``remote_manifest`` is the manifest read back from the server (None when there is none);
    ``remote_sizes`` are the sizes the server reports for those files now, so a manifest that outlived
    its files cannot hide a missing or truncated upload.
    """
    known = (remote_manifest or {}).get("files", {}) if isinstance(remote_manifest, Mapping) else {}
    out = []
    for f in files:
        entry = known.get(f.name) if isinstance(known, Mapping) else None
        same = isinstance(entry, Mapping) and entry.get("size") == f.size and entry.get("sha256") == f.sha256
        if same and remote_sizes is not None and remote_sizes.get(f.name) != f.size:
            same = False
        if not same:
            out.append(f)
    return out
