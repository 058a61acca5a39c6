"""The HTTP side of one ComfyUI server: one client (one connection pool) per command.

Every request carries the configured headers; every transport failure goes through one mapping
(:meth:`ComfyClient.mapped`) into lorawf's error tree, and every bad status through :meth:`check_status`.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# httpx's __init__ imports its own command line (click, rich, pygments: 30 ms, measured in docs/bench.md)
# whenever those are installed; lorawf never runs it. A ``None`` entry makes that import fail the way httpx
# expects (it then defines a stub ``httpx.main``), which leaves everything else in httpx as it is.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx

from lorawf import __version__
from lorawf.comfy.events import (
    Event,
    first_line,
)
from lorawf.comfy.node_errors import NodeError, parse_node_errors, rejection
from lorawf.errors import (
    ProtocolError,
    ServerRejected,
    ServerUnreachable,
    UsageError,
)
from lorawf.net.settings import ServerSettings

if TYPE_CHECKING:
    from typing_extensions import Self

WS_MAX_SIZE = 256 * 1024 * 1024
USER_AGENT = f"lorawf/{__version__}"

Sink = Callable[[Event], None]


# ------------------------------------------------------------------------------------------ HTTP


def make_ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """TLS settings for https/wss: verification on, ``--ca-bundle`` extra roots, explicit ``--insecure``."""
    if not settings.base_url.startswith("https"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_bundle) if settings.ca_bundle \
            else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca-bundle {settings.ca_bundle}: cannot load: {exc}") from None
    if settings.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _body_excerpt(resp: httpx.Response, settings: ServerSettings) -> str:
    try:
        text = resp.text
    except Exception:  # noqa: BLE001 - undecodable body: say nothing about it
        return ""
    line = first_line(text.replace("\r", "\n"))
    if line.lower().startswith("500 internal server error"):
        rest = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        line = f"{line}: {rest[0]}" if rest else line
    return settings.secrets.scrub(line[:200])


@dataclass(frozen=True)
class SubmitResult:
    prompt_id: str
    number: float | None
    node_errors: list[NodeError]


class ComfyClient:
    """HTTP side of one server: every request carries the configured headers; errors become lorawf errors."""

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

    @property
    def where(self) -> str:
        return self.settings.redacted_url

    def _unreachable(self, exc: Exception, what: str) -> ServerUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            reason = "timed out"
        else:
            reason = first_line(str(exc)) or type(exc).__name__
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError) or "CERTIFICATE" in reason.upper():
                reason = f"TLS error: {reason} (use --ca-bundle FILE, or --insecure to skip verification)"
        return ServerUnreachable(self.settings.secrets.scrub(f"cannot reach {self.where} ({what}): {reason}"))

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

    async def request(self, method: str, path: str, *, what: str | None = None, **kwargs: Any) -> httpx.Response:
        """Send one request; transport failures are :class:`ServerUnreachable`, bad statuses ProtocolError."""
        what = what or f"{method} {path}"
        with self.mapped(what):
            resp = await self.http.request(method, path, **kwargs)
        self.check_status(resp, what)
        return resp

    def check_status(self, resp: httpx.Response, what: str, ok: tuple[int, ...] = ()) -> None:
        code = resp.status_code
        if 200 <= code < 300 or code in ok:
            return
        excerpt = _body_excerpt(resp, self.settings)
        tail = f": {excerpt}" if excerpt else ""
        if code in (401, 403, 407):
            raise ProtocolError(f"{what}: HTTP {code}{tail}",
                                hint="the server or a proxy refused our credentials; check --header / LORAWF_TOKEN")
        if code == 413:
            raise ProtocolError(f"{what}: request too large for the server (HTTP 413){tail}")
        if code >= 500:
            raise ProtocolError(f"{what}: server error (HTTP {code}){tail}")
        raise ProtocolError(f"{what}: unexpected HTTP {code}{tail}")

    def json_of(self, resp: httpx.Response, what: str) -> Any:
        try:
            return resp.json()
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"{what}: server sent malformed JSON (HTTP {resp.status_code})") from None

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        what = f"GET {path}"
        return self.json_of(await self.request("GET", path, what=what, **kwargs), what)

    async def get_object(self, path: str) -> dict[str, Any]:
        """A GET whose answer must be a JSON object."""
        body = await self.get_json(path)
        if not isinstance(body, dict):
            raise ProtocolError(f"GET {path}: expected a JSON object")
        return body

    async def object_info(self) -> dict[str, Any]:
        """``GET /object_info``: every node class the server knows."""
        return await self.get_object("/object_info")

    async def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: server version, Python/torch versions and devices."""
        return await self.get_object("/system_stats")

    async def server_facts(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``/system_stats`` and ``/internal/folder_paths`` (``None`` when the server does not offer it)."""
        stats = await self.system_stats()
        try:
            paths = await self.get_json("/internal/folder_paths")
        except ProtocolError:
            paths = None
        return stats, paths if isinstance(paths, dict) else None

    async def get_queue(self) -> dict[str, Any]:
        return await self.get_object("/queue")

    async def get_history(self, prompt_id: str) -> dict[str, Any] | None:
        """Our history entry, or ``None`` while it is ``{}`` (not finished, or unknown)."""
        body = await self.get_json(f"/history/{prompt_id}")
        if not isinstance(body, dict):
            raise ProtocolError(f"GET /history/{prompt_id}: expected a JSON object")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def post_prompt(self, workflow: Mapping[str, Any], client_id: str | None, prompt_id: str,
                          extra_data: Mapping[str, Any] | None = None) -> SubmitResult:
        """``POST /prompt``; 400 → :class:`PromptRejected`; anything malformed → ProtocolError."""
        body: dict[str, Any] = {"prompt": workflow, "prompt_id": prompt_id}
        if client_id:
            body["client_id"] = client_id
        if extra_data:
            body["extra_data"] = dict(extra_data)
        what = "POST /prompt"
        with self.mapped(what):
            resp = await self.http.post("/prompt", json=body)
        if resp.status_code == 400:
            data = self.json_of(resp, what)
            if not isinstance(data, Mapping):
                raise ProtocolError(f"{what}: HTTP 400 with an unexpected body")
            raise rejection(400, data.get("error"), parse_node_errors(data.get("node_errors"), workflow))
        self.check_status(resp, what)
        data = self.json_of(resp, what)
        if not isinstance(data, Mapping) or not isinstance(data.get("prompt_id"), str):
            raise ProtocolError(f"{what}: answer has no prompt_id",
                                hint=f"it may still have been queued as {prompt_id}; see `lorawf watch {prompt_id}`")
        return SubmitResult(data["prompt_id"], data.get("number"),
                            parse_node_errors(data.get("node_errors"), workflow))

    async def post_empty(self, path: str, body: Mapping[str, Any]) -> None:
        """POSTs that answer an empty 200 (``/queue``, ``/interrupt``): never parse their body."""
        await self.request("POST", path, json=dict(body))

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
        if 400 <= resp.status_code < 500:
            excerpt = _body_excerpt(resp, self.settings)
            raise ServerRejected(f"{what}: the server refused the upload (HTTP {resp.status_code})"
                                 + (f": {excerpt}" if excerpt else ""))
        self.check_status(resp, what)
        body = self.json_of(resp, what)
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
                self.check_status(resp, what)
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
                self.check_status(resp, what)
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
