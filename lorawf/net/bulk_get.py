"""A lean HTTP/1.1 GET that streams a response body straight into a file: the download path for big outputs.

Why not httpx here: its pure-Python stack moves the body in 64 KiB pieces through several layers, which caps a
loopback download of a multi-GB LoRA checkpoint at about half of curl's speed. This module does one thing: a
blocking socket, ``recv_into`` a reused 1 MiB buffer, ``os.write`` (flat memory, run in a worker thread).
Anything unusual (a proxy configured for the host, chunked transfer encoding, no Content-Length) is reported as
:class:`Unsupported` and the caller falls back to httpx.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

BUFFER = 1 << 20
MAX_HEAD = 64 * 1024


class Unsupported(Exception):
    """This request needs the general HTTP client (proxy, chunked body, no length...)."""


class Interrupted(Exception):
    """The connection failed or was cut; ``written`` bytes of the body are already in the file."""

    def __init__(self, reason: str, written: int) -> None:
        super().__init__(reason)
        self.written = written


@dataclass(frozen=True)
class Head:
    """Status line and headers (names lower-cased) of a response."""

    status: int
    headers: Mapping[str, str]
    body_start: bytes


def proxied(base_url: str) -> bool:
    """True when the environment configures a proxy for this host (httpx would use it; we cannot)."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def _connect(base_url: str, ssl_context: ssl.SSLContext | None, timeout: float) -> socket.socket:
    parts = urlsplit(base_url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = socket.create_connection((host, port), timeout=min(timeout, 15.0))
    sock.settimeout(timeout)
    if parts.scheme == "https":
        context = ssl_context or ssl.create_default_context()
        return context.wrap_socket(sock, server_hostname=host)
    return sock


def _read_head(sock: socket.socket) -> Head:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise Interrupted("connection closed before the response headers", 0)
        data += chunk
        if len(data) > MAX_HEAD:
            raise Unsupported("response headers too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise Unsupported(f"unexpected status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Head(int(parts[1]), headers, rest)


def get_to_file(
    base_url: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    part_path: str,
    resume_from: int,
    stop: threading.Event,
    timeout: float = 60.0,
    on_head: Callable[[Head], None] | None = None,
) -> tuple[Head, int]:
    """GET ``base_url + path?params``; on 200/206 write the body into ``part_path`` and return ``(head, n)``.

    A 206 answer to a request with a ``Range`` header appends; 200 truncates. Other statuses return at once
    with ``n = 0`` and up to 64 KiB of the error body in ``head.body_start``. Raises :class:`Unsupported`
    or :class:`Interrupted` (the bytes written so far stay in the file, so the next call can resume).
    """
    if proxied(base_url):
        raise Unsupported("a proxy is configured for this host")
    if any(c in "\r\n" for item in headers.items() for text in item for c in text):
        raise Unsupported("a header contains a line break")
    parts = urlsplit(base_url)
    target = f"{parts.path.rstrip('/')}{path}?{urlencode(params)}"
    host = parts.netloc.rpartition("@")[2]
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        sock = _connect(base_url, ssl_context, timeout)
    except OSError as exc:
        raise Interrupted(f"cannot connect: {exc}", 0) from None
    written = 0
    with sock:
        try:
            sock.sendall(request)
            head = _read_head(sock)
        except OSError as exc:
            raise Interrupted(str(exc) or type(exc).__name__, 0) from None
        if head.status not in (200, 206):
            return head, 0
        if "chunked" in head.headers.get("transfer-encoding", "").lower() or \
                not head.headers.get("content-length", "").isdigit():
            raise Unsupported("no Content-Length")
        expected = int(head.headers["content-length"])
        append = head.status == 206 and resume_from > 0
        if on_head is not None:
            on_head(head)  # before the body: what a later resume needs (the ETag) is kept even if cut
        fd = os.open(part_path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
        try:
            first = head.body_start[:expected]
            if first:
                os.write(fd, first)
                written = len(first)
            buffer = bytearray(BUFFER)
            view = memoryview(buffer)
            while written < expected:
                if stop.is_set():
                    raise Interrupted("cancelled", written)
                try:
                    n = sock.recv_into(buffer, min(BUFFER, expected - written))
                except OSError as exc:
                    raise Interrupted(str(exc) or type(exc).__name__, written) from None
                if n == 0:
                    raise Interrupted(f"connection closed after {written} of {expected} bytes", written)
                mv = view[:n]
                while mv:  # os.write may write less than asked
                    mv = mv[os.write(fd, mv):]
                written += n
            os.fsync(fd)
        finally:
            os.close(fd)
    return head, written
