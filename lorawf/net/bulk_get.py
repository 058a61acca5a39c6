"""A lean HTTP GET that streams a response body straight into a file: the download path for big outputs.

Why not httpx here: its pure-Python stack moves the body in 64 KiB pieces through several layers, which caps a
loopback download of a multi-GB LoRA checkpoint at about half of curl's speed. This module does one thing:
stdlib :mod:`http.client` parses the response (Content-Length, chunked, close-delimited and HTTP/1.0 bodies
alike), ``readinto`` fills a reused 1 MiB buffer, ``os.write`` puts it on disk (flat memory, run in a worker
thread). A proxy configured for the host is :class:`Unsupported`: the caller falls back to httpx.

Connections are kept alive and reused by the next download to the same server (:data:`POOL`): on a link with
a 50 ms round trip a new connection per file cost one more round trip for every validation image. A reused
connection the server has closed meanwhile is replaced by a new one, once, before any byte is written.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

BUFFER = 1 << 20
#: Bytes of an error answer's body that are kept for the error message.
ERROR_BODY = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.ASCII)


class Unsupported(Exception):
    """This request needs the general HTTP client (a proxy is configured for the host)."""


class Interrupted(Exception):
    """The connection failed or was cut; ``written`` bytes of the body are already in the file."""

    def __init__(self, reason: str, written: int) -> None:
        super().__init__(reason)
        self.written = written


@dataclass(frozen=True)
class Head:
    """Status and headers (names lower-cased) of a response; ``body_start`` holds an error answer's body."""

    status: int
    headers: Mapping[str, str]
    body_start: bytes


def proxied(base_url: str) -> bool:
    """True when the environment configures a proxy for this host (httpx would use it; we cannot)."""
    if sys.platform not in ("darwin", "win32") and not any(k.lower().endswith("_proxy") for k in os.environ):
        return False  # the common case, answered without importing urllib.request (start-up time)
    import urllib.request

    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class Stop(threading.Event):
    """The stop signal of one download: setting it also shuts the socket down, so a worker thread blocked
    in a read (a stalled server) returns at once instead of after the socket timeout."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
        if self.is_set():
            self._shutdown()

    def set(self) -> None:
        super().set()
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


class RangeMismatch(Exception):
    """A 206 answer that does not continue the partial file where it ends: nothing was written."""


class ConnectionPool:
    """Idle keep-alive connections per server, shared by the worker threads (a few per server at most)."""

    def __init__(self, per_server: int = 8) -> None:
        self.per_server = per_server
        self._idle: dict[tuple[str, ssl.SSLContext | None], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[str, ssl.SSLContext | None]) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, key: tuple[str, ssl.SSLContext | None], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.per_server:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


POOL = ConnectionPool()


def new_connection(base_url: str, ssl_context: ssl.SSLContext | None, timeout: float) -> http.client.HTTPConnection:
    """An unconnected ``http.client`` connection to the server of ``base_url`` (https with ``ssl_context``)."""
    parts = urlsplit(base_url)
    host = parts.hostname or "localhost"
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                           context=ssl_context or ssl.create_default_context())
    return http.client.HTTPConnection(host, parts.port, timeout=timeout)


def range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header, or ``None`` when it has none."""
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    return int(match.group(1)) if match else None


def _write_all(fd: int, data: memoryview) -> None:
    while data:  # os.write may write less than asked
        data = data[os.write(fd, data):]


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

    A 206 answer to a request with a ``Range`` header appends, once its ``Content-Range`` is checked to start at
    ``resume_from`` (else :class:`RangeMismatch`); 200 truncates. Other statuses return at once with ``n = 0``
    and up to 64 KiB of the error body in ``head.body_start``. Raises :class:`Unsupported` or
    :class:`Interrupted` (the bytes written so far stay in the file, so the next call can resume). A body
    shorter than its Content-Length returns with ``n`` short of it: the caller compares.
    """
    if proxied(base_url):
        raise Unsupported("a proxy is configured for this host")
    if any(c in "\r\n" for item in headers.items() for text in item for c in text):
        raise Unsupported("a header contains a line break")
    parts = urlsplit(base_url)
    target = f"{parts.path.rstrip('/')}{path}?{urlencode(params)}"
    request_headers = {"Accept-Encoding": "identity", **headers}
    key = (base_url, ssl_context)
    pooled = POOL.take(key)
    conn = pooled or new_connection(base_url, ssl_context, timeout)
    written = 0
    keep = False
    try:
        try:
            response = _send(conn, target, request_headers, stop)
        except (OSError, http.client.HTTPException) as exc:
            if pooled is None or isinstance(exc, _Cancelled):
                raise _interrupted(exc) from None
            conn.close()  # the server closed the idle connection: one new one, nothing was written yet
            conn = new_connection(base_url, ssl_context, timeout)
            try:
                response = _send(conn, target, request_headers, stop)
            except (OSError, http.client.HTTPException) as again:
                raise _interrupted(again) from None
        head_headers = {name.lower(): value for name, value in response.getheaders()}
        if response.status not in (200, 206):
            try:
                body = response.read(ERROR_BODY)
            except (OSError, http.client.HTTPException):
                body = b""
            return Head(response.status, head_headers, body), 0
        head = Head(response.status, head_headers, b"")
        append = response.status == 206 and resume_from > 0
        if response.status == 206:
            start = range_start(head_headers.get("content-range"))
            if start != resume_from:
                raise RangeMismatch(f"the server sent bytes from {start if start is not None else 'an unknown offset'}, "
                                    f"the partial file ends at {resume_from}")
        if on_head is not None:
            on_head(head)  # before the body: what a later resume needs (the ETag) is kept even if cut
        fd = os.open(part_path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
        try:
            buffer = bytearray(BUFFER)
            view = memoryview(buffer)
            while True:
                if stop.is_set():
                    raise Interrupted("cancelled", written)
                try:
                    n = response.readinto(buffer)
                except http.client.IncompleteRead as exc:  # a cut chunked body: keep the part that came
                    _write_all(fd, memoryview(exc.partial))
                    written += len(exc.partial)
                    raise Interrupted(f"connection closed after {written} bytes", written) from None
                except (OSError, http.client.HTTPException) as exc:
                    raise Interrupted(str(exc) or type(exc).__name__, written) from None
                if not n:
                    if response.length:  # http.client counts down a Content-Length body
                        raise Interrupted(f"connection closed after {written} of "
                                          f"{written + response.length} bytes", written)
                    break
                _write_all(fd, view[:n])
                written += n
            os.fsync(fd)
            keep = not response.will_close
        finally:
            os.close(fd)
    finally:
        if isinstance(stop, Stop):
            stop.attach(None)
        if keep:
            POOL.give(key, conn)
        else:
            conn.close()
    return head, written


class _Cancelled(OSError):
    """The stop signal came before the request was sent."""


def _interrupted(exc: Exception) -> Interrupted:
    return Interrupted("cancelled" if isinstance(exc, _Cancelled) else (str(exc) or type(exc).__name__), 0)


def _send(conn: http.client.HTTPConnection, target: str, headers: Mapping[str, str],
          stop: threading.Event) -> http.client.HTTPResponse:
    """Send the GET on ``conn`` (connecting it first if new) and read the response's head."""
    if conn.sock is None:
        conn.connect()
    if isinstance(stop, Stop):
        stop.attach(conn.sock)
    if stop.is_set():
        raise _Cancelled("cancelled")
    conn.request("GET", target, headers=dict(headers))
    return conn.getresponse()
