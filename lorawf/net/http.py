"""The HTTP side of one ComfyUI server: one client (one connection pool) per command.

Every request carries the configured headers; every transport failure goes through one mapping
(:meth:`ComfyClient.mapped`) into lorawf's error tree, and every bad status through :meth:`check_status`.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

# httpx's __init__ imports its own command line (click, rich, pygments: 30 ms, measured in docs/bench.md)
# whenever those are installed; lorawf never runs it. A ``None`` entry makes that import fail the way httpx
# expects (it then defines a stub ``httpx.main``), which leaves everything else in httpx as it is.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx

from lorawf.comfy.events import first_line
from lorawf.errors import ProtocolError, ServerRejected, ServerUnreachable
from lorawf.net.api import (
    USER_AGENT,
    JsonApi,
    Reply,
    Sink,
    SubmitResult,
    body_excerpt,
    make_ssl_context,
    unreachable,
)
from lorawf.net.settings import ServerSettings

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["USER_AGENT", "WS_MAX_SIZE", "ComfyClient", "Sink", "SubmitResult", "fetch_object_info", "fetch_queue",
           "fetch_system_stats", "make_ssl_context"]

WS_MAX_SIZE = 256 * 1024 * 1024


# ------------------------------------------------------------------------------------------ HTTP


class ComfyClient(JsonApi):
    """The full client of one server over httpx (one connection pool): the JSON API of
    :class:`~lorawf.net.api.JsonApi` plus uploads and streamed reads; errors become lorawf errors."""

    def __init__(self, settings: ServerSettings, *, timeout: float = 60.0) -> None:
        self.settings = settings
        self.ssl_context = make_ssl_context(settings)
        headers = {"User-Agent": USER_AGENT, **settings.request_headers()}
        self.http = httpx.AsyncClient(
            base_url=settings.base_url, headers=headers,
            # plain http: no TLS context to build (it costs start-up time and is never used)
            verify=self.ssl_context if self.ssl_context is not None else False,
            timeout=httpx.Timeout(timeout, connect=15.0), follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    def _unreachable(self, exc: Exception, what: str) -> ServerUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            return unreachable(self.settings, what, "timed out")
        reason = first_line(str(exc)) or type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        return unreachable(self.settings, what, reason, tls=isinstance(cause, ssl.SSLError))

    @contextlib.contextmanager
    def mapped(self, what: str) -> Iterator[None]:
        """The one mapping of transport failures (httpx's tree) to :class:`ServerUnreachable` for ``what``.

        Modelled on httpx's own ``map_httpcore_exceptions``: one context manager instead of the same
        ``except`` at every call.
        """
        try:
            yield
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None

    async def call(self, method: str, path: str, *, what: str, json_body: Any = None) -> Reply:
        with self.mapped(what):
            if json_body is None:
                resp = await self.http.request(method, path)
            else:
                resp = await self.http.request(method, path, json=json_body)
        return Reply(resp.status_code, resp.headers, resp.content)

    def check_response(self, resp: httpx.Response, what: str, ok: tuple[int, ...] = ()) -> None:
        """:meth:`check_status` of an httpx answer, streamed or not (a stream's unread body says nothing)."""
        try:
            body = resp.content
        except httpx.ResponseNotRead:
            body = b""
        self.check_status(Reply(resp.status_code, resp.headers, body), what, ok)

    async def upload(self, local: Path, name: str, subfolder: str, *, kind: str = "input",
                     overwrite: bool = True) -> dict[str, Any]:
        """``POST /upload/image`` of one local file under a name the caller has checked; streams the file.

        A refusal (4xx) is :class:`ServerRejected`; the answer must echo our name and subfolder, since
        the server renames on a clash (``name (1).png``), which would break the dataset's captions.
        """
        what = f"POST /upload/image {name!r}"
        data = {"subfolder": subfolder, "type": kind}
        if overwrite:
            data["overwrite"] = "true"
        with self.mapped(what), open(local, "rb") as handle:  # noqa: ASYNC230 - httpx streams the file
            resp = await self.http.post("/upload/image", data=data,
                                        files={"image": (name, handle, "application/octet-stream")})
        reply = Reply(resp.status_code, resp.headers, resp.content)
        if 400 <= reply.status < 500:
            excerpt = body_excerpt(reply.body, self.settings)
            raise ServerRejected(f"{what}: the server refused the upload (HTTP {reply.status})"
                                 + (f": {excerpt}" if excerpt else ""))
        self.check_status(reply, what)
        body = self.json_of(reply, what)
        if not isinstance(body, Mapping) or body.get("name") != name or body.get("subfolder") != subfolder:
            raise ProtocolError(f"{what}: the server stored it as {body!r}, not as {name!r} in {subfolder!r}")
        return dict(body)

    async def remote_size(self, filename: str, subfolder: str, kind: str = "input") -> int | None:
        """Size of a file the server holds (via a one-byte ranged ``/view``), or ``None`` if it has none."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        what = f"GET /view {filename!r}"
        with self.mapped(what):
            async with self.http.stream("GET", "/view", params=params, headers={"Range": "bytes=0-0"}) as resp:
                if resp.status_code == 404:
                    return None
                self.check_response(resp, what)
                rng = resp.headers.get("Content-Range", "")
                if resp.status_code == 206 and "/" in rng and rng.rsplit("/", 1)[1].isdigit():
                    return int(rng.rsplit("/", 1)[1])
                length = resp.headers.get("Content-Length")
                return int(length) if length and length.isdigit() else None

    async def read_small(self, filename: str, subfolder: str, kind: str = "input",
                         limit: int = 8 << 20) -> bytes | None:
        """A small server file's bytes (e.g. a manifest), ``None`` if it does not exist."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        what = f"GET /view {filename!r}"
        with self.mapped(what):
            async with self.http.stream("GET", "/view", params=params) as resp:
                if resp.status_code == 404:
                    return None
                self.check_response(resp, what)
                data = b""
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise ProtocolError(f"{what}: larger than {limit} bytes")
                return data


# ------------------------------------------------------------------------------------ simple reads


async def fetch_queue(settings: ServerSettings) -> dict[str, Any]:
    """``GET /queue`` with a client of its own (for one-request commands)."""
    async with ComfyClient(settings) as client:
        return await client.get_queue()


async def fetch_object_info(settings: ServerSettings) -> dict[str, Any]:
    """``GET /object_info`` with a client of its own: every node class the server knows."""
    async with ComfyClient(settings) as client:
        return await client.object_info()


async def fetch_system_stats(settings: ServerSettings) -> dict[str, Any]:
    """``GET /system_stats`` with a client of its own: versions and devices."""
    async with ComfyClient(settings) as client:
        return await client.system_stats()
