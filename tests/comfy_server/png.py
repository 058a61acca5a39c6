"""Tiny PNG writer (stdlib only, so the server starts fast and needs no Pillow for plain saves)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def make_png(width: int, height: int, rgb: tuple[int, int, int], text: dict[str, str] | None = None) -> bytes:
    """A solid-colour 8-bit RGB PNG, with optional ``tEXt`` chunks (as SaveImage writes the prompt)."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for key, value in (text or {}).items():
        out += _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
    out += _chunk(b"IDAT", zlib.compress(raw, 1)) + _chunk(b"IEND", b"")
    return out


def color_to_rgb(color: int) -> tuple[int, int, int]:
    """ComfyUI's EmptyImage colour int (0xRRGGBB) as an RGB triple."""
    return ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
