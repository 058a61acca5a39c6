"""The websocket of one clientId: moves frames into an inbox and reconnects (:func:`reconnect_delay`); decides nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from lorawf.comfy.events import first_line
from lorawf.comfy.follow import reconnect_delay
from lorawf.errors import (
    ProtocolError,
    ServerUnreachable,
)
from lorawf.net.api import USER_AGENT
from lorawf.net.limits import INBOX_SIZE
from lorawf.net.settings import ServerSettings

__all__ = ["INBOX_SIZE", "WS_MAX_SIZE", "EventSocket"]

#: Websocket message size limit: far above the library's 1 MiB (full-size PNG frames, big ``executed``).
WS_MAX_SIZE = 256 * 1024 * 1024


class EventSocket:
    """The websocket of one clientId. Feeds ``inbox`` with ``(kind, payload)`` tuples:

    ``("msg", dict)``, ``("bin", bytes)``, ``("closed", reason)``, ``("reconnected", None)``,
    ``("bad", reason)``. It reconnects with backoff and the same clientId, each time only after the old
    connection is fully closed (a server that briefly holds two sockets for one clientId may drop both).
    """

    def __init__(self, settings: ServerSettings, client_id: str, ssl_context: ssl.SSLContext | None,
                 inbox: asyncio.Queue[tuple[str, Any]], *, open_timeout: float = 20.0) -> None:
        self.settings = settings
        self.client_id = client_id
        self.ssl_context = ssl_context
        self.inbox = inbox
        self.open_timeout = open_timeout
        self.url = f"{settings.ws_url.rstrip('/')}/ws?clientId={client_id}"
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cycling = False
        self.connected = False

    async def _connect_once(self) -> ClientConnection:
        ws = await connect(
            self.url, additional_headers=self.settings.request_headers(), max_size=WS_MAX_SIZE,
            ssl=self.ssl_context if self.url.startswith("wss") else None, open_timeout=self.open_timeout,
            ping_interval=20, ping_timeout=60, close_timeout=5, user_agent_header=USER_AGENT,
            # no permessage-deflate: ComfyUI's messages are small JSON, and inflating each one cost more
            # CPU than the bytes saved are worth on any link (docs/bench.md, events)
            compression=None,
        )
        try:
            while True:  # the first status frame with our sid means the socket is registered
                frame = await asyncio.wait_for(ws.recv(), self.open_timeout)
                await self._deliver(frame)
                if isinstance(frame, str):
                    with contextlib.suppress(ValueError):
                        msg = json.loads(frame)
                        if isinstance(msg, dict) and msg.get("type") == "status" and \
                                isinstance(msg.get("data"), dict) and "sid" in msg["data"]:
                            break
        except BaseException:
            await ws.close()
            raise
        self.connected = True
        return ws

    async def _deliver(self, frame: str | bytes) -> None:
        if isinstance(frame, (bytes, bytearray, memoryview)):
            await self._put(("bin", bytes(frame)))
            return
        try:
            msg = json.loads(frame)
        except ValueError:
            await self._put(("bad", "a websocket text frame was not valid JSON"))
            return
        if isinstance(msg, dict):
            await self._put(("msg", msg))

    async def _put(self, item: tuple[str, Any]) -> None:
        # A bounded inbox: when the server outpaces us, the reader waits and the backlog stays in TCP.
        try:
            self.inbox.put_nowait(item)  # the usual case, without a coroutine per message
        except asyncio.QueueFull:
            await self.inbox.put(item)

    async def open(self) -> None:
        """Connect and wait for the registering ``status``; then keep the socket alive in the background."""
        what = f"websocket {self.settings.redacted_url}/ws"
        try:
            self._ws = await self._connect_once()
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403, 407):
                raise ProtocolError(f"{what}: handshake refused (HTTP {code})",
                                    hint="check --header / LORAWF_TOKEN") from None
            raise ProtocolError(f"{what}: handshake refused (HTTP {code})") from None
        except (OSError, TimeoutError, asyncio.TimeoutError, InvalidHandshake, InvalidURI,
                ConnectionClosed) as exc:
            reason = first_line(str(exc)) or type(exc).__name__
            raise ServerUnreachable(self.settings.secrets.scrub(f"cannot reach {self.settings.redacted_url} (websocket /ws): {reason}")) from None
        self._task = asyncio.create_task(self._run(), name="lorawf-ws")

    async def _pump(self, ws: ClientConnection) -> str:
        reason = "closed by the server"
        try:
            async for frame in ws:
                await self._deliver(frame)
        except ConnectionClosed as exc:
            reason = f"connection lost ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        except Exception as exc:  # noqa: BLE001 - any read failure means: reconnect
            reason = f"connection lost ({type(exc).__name__})"
        finally:
            await ws.close()  # fully closed before any reconnect
            self.connected = False
        return reason

    async def _run(self) -> None:
        attempt = 0
        ws = self._ws
        while not self._stopping:
            if ws is not None:
                reason = await self._pump(ws)
                ws = self._ws = None
                if self._stopping:
                    return
                if self._cycling:
                    self._cycling = False
                else:
                    await self.inbox.put(("closed", reason))
                    await asyncio.sleep(reconnect_delay(0))
            try:
                ws = self._ws = await self._connect_once()
                attempt = 0
                await self.inbox.put(("reconnected", None))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - server down or restarting: back off and retry
                await asyncio.sleep(reconnect_delay(attempt))
                attempt += 1

    async def cycle(self) -> None:
        """Close cleanly and reconnect with the same clientId (re-registers a silently dropped sid)."""
        if self._ws is not None and not self._cycling:
            self._cycling = True
            await self._ws.close()

    async def close(self) -> None:
        """Stop for good: send the close frame and let the connection go without waiting for the server's
        answer (a round trip, and more for the TCP close, that only kept the user waiting: docs/bench.md)."""
        self._stopping = True
        if self._ws is not None:
            self._ws.close_timeout = 0
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
