"""Faults a test can arm through ``POST /__test__/control`` (not part of ComfyUI).

Control kinds handled here (parameters with their defaults):

``fail_next``  route="/prompt", method="POST", mode="500", status=None, count=1
    Answer the next ``count`` matching requests (route without the ``/api`` prefix; method ``*``
    matches any) with: ``mode="500"`` aiohttp's plain-text 500 page; ``"413"`` the plain-text
    ``Maximum request body size 104857600 exceeded.``; ``"malformed"`` a 200 whose JSON body is cut
    off; ``"close"`` the TCP connection dropped without an answer; ``"status"`` an empty answer
    with ``status``; ``"truncate"`` (file routes such as ``/view``) the headers and half of the file,
    then the connection dropped.
``stall``  route="/prompt", method="POST", seconds=1.0, count=1
    Delay the next matching requests by ``seconds``, then answer normally.
``drop_ws``  after_progress=1, client_id=None
    After the ``after_progress``-th ``progress`` event has been sent (counted from arming, over all
    prompts), close the TCP connection of the socket ``client_id`` (all sockets when None) with no
    close frame.
``silence``  prompt_id=None, after_progress=0
    Stop sending websocket events that carry the prompt's ``prompt_id`` (the next prompt to report
    progress when None) once ``after_progress`` of its progress events went out. The prompt keeps
    running and reaches history; ``status`` broadcasts continue.
``binary_frame``  event_type=1, size=5 MiB, after_progress=1, count=1, image_format=2
    After the ``after_progress``-th progress event of a run, send ``count`` binary frames of about
    ``size`` bytes to the running prompt's client: type 1 (``>I`` type, ``>I`` image format, PNG),
    type 4 (``>I`` type, ``>I`` metadata length, JSON metadata, PNG) or type 3 (text).
``hostile_filename``  filename="../../x", subfolder=None, type=None, count=1
    Report ``filename`` (and ``subfolder``/``type`` when given) instead of the real name for every
    file entry of the next ``count`` nodes with file outputs (``executed`` and history).
``require_auth``  header="Authorization", value=None, token=None
    Every HTTP request and websocket handshake must carry ``header: value`` (``token`` means
    ``Bearer <token>``) or gets 401. ``value`` and ``token`` both None switches it off.
``slow_disk``  seconds=0.2, short=False
    Every upload is written in two halves with ``seconds`` between them, so other requests can see the half
    written file (a real server writes in place, and a ``/view`` beside the write sees it growing). With
    ``short`` the second half is never written (a full disk): the stored file stays short.
``clear_faults``
    Disarm everything (auth included).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from tests.comfy_server.png import make_png

ROUTE_DEFAULT = "/prompt"


def padded_png(size: int) -> bytes:
    """A valid PNG of exactly ``size`` bytes (or the smallest possible), padded with a tEXt chunk."""
    base = make_png(8, 8, (0, 128, 255))
    if size <= len(base) + 20:
        return base
    filler = size - len(base) - 12 - len("pad") - 1
    return make_png(8, 8, (0, 128, 255), {"pad": "x" * filler})


class Faults:
    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self.route_faults: list[dict[str, Any]] = []
        self.drop: dict[str, Any] | None = None
        self.silence: dict[str, Any] | None = None
        self.binary: dict[str, Any] | None = None
        self.hostile: dict[str, Any] | None = None
        self.slow_disk: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "auth": list(self.auth) if self.auth else None,
            "route_faults": self.route_faults,
            "drop_ws": self.drop,
            "silence": self.silence,
            "binary_frame": {k: v for k, v in self.binary.items()} if self.binary else None,
            "hostile_filename": self.hostile,
            "slow_disk": self.slow_disk,
        }

    def arm(self, kind: str, p: dict[str, Any]) -> dict[str, Any]:
        if kind in ("fail_next", "stall"):
            self.route_faults.append(
                {
                    "kind": kind,
                    "route": str(p.get("route", ROUTE_DEFAULT)),
                    "method": str(p.get("method", "POST")).upper(),
                    "mode": str(p.get("mode", "500")),
                    "status": p.get("status"),
                    "seconds": float(p.get("seconds", 1.0)),
                    "count": int(p.get("count", 1)),
                }
            )
            if kind == "fail_next" and p.get("status") is not None and "mode" not in p:
                self.route_faults[-1]["mode"] = "status"
        elif kind == "drop_ws":
            self.drop = {
                "after_progress": int(p.get("after_progress", 1)),
                "client_id": p.get("client_id"),
                "seen": 0,
            }
        elif kind == "silence":
            self.silence = {
                "prompt_id": p.get("prompt_id"),
                "after_progress": int(p.get("after_progress", 0)),
                "seen": 0,
                "active": int(p.get("after_progress", 0)) == 0 and p.get("prompt_id") is not None,
            }
        elif kind == "binary_frame":
            self.binary = {
                "event_type": int(p.get("event_type", 1)),
                "size": int(p.get("size", 5 * 1024 * 1024)),
                "after_progress": int(p.get("after_progress", 1)),
                "count": int(p.get("count", 1)),
                "image_format": int(p.get("image_format", 2)),
                "seen": 0,
                "prompt_id": None,
            }
        elif kind == "hostile_filename":
            self.hostile = {
                "filename": str(p.get("filename", "../../x")),
                "subfolder": p.get("subfolder"),
                "type": p.get("type"),
                "count": int(p.get("count", 1)),
            }
        elif kind == "slow_disk":
            self.slow_disk = {"seconds": float(p.get("seconds", 0.2)), "short": bool(p.get("short", False))}
        elif kind == "require_auth":
            value = p.get("value")
            if value is None and p.get("token") is not None:
                value = f"Bearer {p['token']}"
            self.auth = None if value is None else (str(p.get("header", "Authorization")), str(value))
        elif kind == "clear_faults":
            self.__init__()  # type: ignore[misc]
        else:
            raise ValueError(f"unknown control kind {kind!r}")
        return {"ok": True, "faults": self.describe()}

    # --- hooks used by the server ------------------------------------------------------------------

    def authorized(self, headers: Mapping[str, str]) -> bool:
        if self.auth is None:
            return True
        name, value = self.auth
        return headers.get(name) == value

    def take_route_fault(self, method: str, route: str) -> dict[str, Any] | None:
        for fault in self.route_faults:
            if fault["route"] == route and fault["method"] in ("*", method.upper()):
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.route_faults.remove(fault)
                return fault
        return None

    def drop_after_progress(self) -> str | None:
        """Called after each ``progress`` frame went out; returns ``*`` or a sid to cut off."""
        if self.drop is None:
            return None
        self.drop["seen"] += 1
        if self.drop["seen"] < self.drop["after_progress"]:
            return None
        target = self.drop["client_id"] or "*"
        self.drop = None
        return str(target)

    def silenced(self, data: Any) -> bool:
        s = self.silence
        if s is None or not s["active"] or not isinstance(data, dict):
            return False
        return data.get("prompt_id") == s["prompt_id"]

    def on_progress(self, prompt_id: str) -> list[tuple[int, bytes]]:
        """Called after a prompt's progress event was queued; may return binary frames to send."""
        s = self.silence
        if s is not None and not s["active"] and s["prompt_id"] in (None, prompt_id):
            s["prompt_id"] = prompt_id
            s["seen"] += 1
            if s["seen"] >= s["after_progress"]:
                s["active"] = True
        b = self.binary
        frames: list[tuple[int, bytes]] = []
        if b is not None:
            if b["prompt_id"] not in (None, prompt_id):
                return frames
            b["prompt_id"] = prompt_id
            b["seen"] += 1
            if b["seen"] >= b["after_progress"]:
                for _ in range(b["count"]):
                    frames.append(self.binary_frame(b, prompt_id))
                self.binary = None
        return frames

    def binary_frame(self, p: Mapping[str, Any], prompt_id: str | None = None) -> tuple[int, bytes]:
        event_type = int(p.get("event_type", 1))
        size = int(p.get("size", 5 * 1024 * 1024))
        if event_type == 1:
            return 1, struct.pack(">I", int(p.get("image_format", 2))) + padded_png(size - 8)
        if event_type == 4:
            meta = json.dumps(
                {
                    "node_id": p.get("node_id", "1"),
                    "prompt_id": prompt_id or p.get("prompt_id", ""),
                    "display_node_id": p.get("node_id", "1"),
                    "parent_node_id": None,
                    "real_node_id": p.get("node_id", "1"),
                    "image_type": "image/png",
                }
            ).encode()
            return 4, struct.pack(">I", len(meta)) + meta + padded_png(size - 8 - len(meta))
        if event_type == 3:
            node = str(p.get("node_id", "1")).encode()
            text = str(p.get("text", "x" * max(0, size - 8 - len(node)))).encode()
            return 3, struct.pack(">I", len(node)) + node + text
        raise ValueError(f"unsupported binary event type {event_type}")

    def rewrite_outputs(self, ui: dict[str, Any]) -> dict[str, Any]:
        h = self.hostile
        if h is None:
            return ui
        changed = False
        out: dict[str, Any] = {}
        for key, value in ui.items():
            if isinstance(value, list):
                new_list = []
                for entry in value:
                    if isinstance(entry, dict) and "filename" in entry:
                        entry = {**entry, "filename": h["filename"]}
                        if h["subfolder"] is not None:
                            entry["subfolder"] = h["subfolder"]
                        if h["type"] is not None:
                            entry["type"] = h["type"]
                        changed = True
                    new_list.append(entry)
                out[key] = new_list
            else:
                out[key] = value
        if changed:
            h["count"] -= 1
            if h["count"] <= 0:
                self.hostile = None
        return out
