"""A one-connection client for one-shot commands: :class:`~lorawf.net.api.JsonApi` over ``http.client``.

``lorawf submit --no-wait`` asks two or three JSON questions and exits; httpx (with httpcore and anyio) took
half of its start-up (docs/bench.md). This transport keeps one kept-alive connection and runs each request
in a daemon thread, so Ctrl-C interrupts a stalled server at once (the socket is shut down) instead of after
the timeout. It does no proxies (:meth:`QuickClient.usable` says when it can be used), no streams and no
uploads: those are :class:`~lorawf.net.http.ComfyClient`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lorawf.comfy.events import first_line
from lorawf.errors import ServerUnreachable
from lorawf.net.api import USER_AGENT, JsonApi, Reply, make_ssl_context, unreachable
from lorawf.net.bulk_get import new_connection, proxied
from lorawf.net.settings import ServerSettings

if TYPE_CHECKING:
    from typing_extensions import Self


class QuickClient(JsonApi):
    """JSON requests to one server on one blocking connection (each in a thread of its own)."""

    def __init__(self, settings: ServerSettings, *, timeout: float = 60.0) -> None:
        self.settings = settings
        self.ssl_context = make_ssl_context(settings)
        self.timeout = timeout
        self._prefix = urlsplit(settings.base_url).path.rstrip("/")
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **settings.request_headers()}
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    @staticmethod
    def usable(settings: ServerSettings) -> bool:
        """False when the environment configures a proxy for the server (httpx's client honours it)."""
        return not proxied(settings.base_url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._drop()

    async def call(self, method: str, path: str, *, what: str, json_body: Any = None) -> Reply:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Reply] = loop.create_future()

        def settle(reply: Reply | None, error: BaseException | None) -> None:
            if answer.done():
                return
            if error is not None:
                answer.set_exception(error)
            else:
                assert reply is not None
                answer.set_result(reply)

        def work() -> None:
            try:
                reply = self._call(method, path, what, json_body)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, reply, None)

        threading.Thread(target=work, name="lorawf-request", daemon=True).start()
        try:
            return await answer
        except asyncio.CancelledError:
            self._abort()  # the thread's read fails at once; its answer is dropped
            raise

    # -- the blocking side (in the request's thread) ------------------------------------------------

    def _call(self, method: str, path: str, what: str, json_body: Any) -> Reply:
        body = None if json_body is None else json.dumps(json_body).encode("utf-8")
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            conn, reused = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._forget(conn)
                # an idle connection the server closed meanwhile: a GET is asked again on a new one (a POST
                # is never sent twice: the server may have queued it)
                if attempt == 0 and reused and method == "GET" and isinstance(
                        exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
                    continue
                raise self._unreachable(exc, what) from None
            if resp.will_close:
                self._forget(conn)
            return Reply(resp.status, {name.lower(): value for name, value in resp.getheaders()}, data)
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._conn is not None:
                return self._conn, True
            self._conn = new_connection(self.settings.base_url, self.ssl_context, self.timeout)
            return self._conn, False

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _forget(self, conn: http.client.HTTPConnection) -> None:
        """Close ``conn``; the next request opens a new one (unless another already replaced it)."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
        conn.close()

    def _abort(self) -> None:
        """Cut the connection in use (Ctrl-C): its thread's read fails at once and closes it; the next
        request (the cancel that follows) gets a new connection."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _unreachable(self, exc: Exception, what: str) -> ServerUnreachable:
        if isinstance(exc, TimeoutError):
            return unreachable(self.settings, what, "timed out")
        reason = first_line(str(exc)) or type(exc).__name__
        return unreachable(self.settings, what, reason, tls=isinstance(exc, ssl.SSLError))
