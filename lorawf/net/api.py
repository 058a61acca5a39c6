"""ComfyUI's JSON API, written once over a transport seam.

:class:`JsonApi` holds every JSON request lorawf makes (``/system_stats``, ``/object_info``, ``/queue``,
``/history``, ``POST /prompt``...) and the one policy for statuses and bodies; a transport only implements
:meth:`JsonApi.call`, one request to one :class:`Reply`. Two transports exist: httpx's pooled async client
(:class:`lorawf.net.http.ComfyClient`, for everything, streaming and uploads included) and a single
blocking ``http.client`` connection (:class:`lorawf.net.quick.QuickClient`) for one-shot commands, which
then start without importing httpx or the websockets library (``submit --no-wait``, docs/bench.md).
Nothing here imports either library.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lorawf import __version__
from lorawf.comfy.events import Event, first_line
from lorawf.comfy.node_errors import NodeError, parse_node_errors, rejection
from lorawf.errors import ProtocolError, ServerUnreachable, UsageError
from lorawf.net.settings import ServerSettings

USER_AGENT = f"lorawf/{__version__}"

#: Where the client's steps are reported.
Sink = Callable[[Event], None]


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, headers (names lower-cased) and the body (or its start, for a stream)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class SubmitResult:
    prompt_id: str
    number: float | None
    node_errors: list[NodeError]


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


def body_excerpt(body: bytes, settings: ServerSettings) -> str:
    """The first meaningful line of an error answer's body, secrets scrubbed, at most 200 characters."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return ""  # undecodable body: say nothing about it
    line = first_line(text.replace("\r", "\n"))
    if line.lower().startswith("500 internal server error"):
        rest = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        line = f"{line}: {rest[0]}" if rest else line
    return settings.secrets.scrub(line[:200])


def unreachable(settings: ServerSettings, what: str, reason: str, *, tls: bool = False) -> ServerUnreachable:
    """The one wording of a transport failure, whichever transport failed; ``tls`` adds what to do."""
    if tls or "CERTIFICATE" in reason.upper():
        reason = f"TLS error: {reason} (use --ca-bundle FILE, or --insecure to skip verification)"
    return ServerUnreachable(settings.secrets.scrub(f"cannot reach {settings.redacted_url} ({what}): {reason}"))


class JsonApi:
    """Every JSON request to one server, over :meth:`call`; bad statuses become lorawf errors here only."""

    settings: ServerSettings
    ssl_context: ssl.SSLContext | None

    async def call(self, method: str, path: str, *, what: str, json_body: Any = None) -> Reply:
        """Send one request and return its whole answer; transport failures are :class:`ServerUnreachable`."""
        raise NotImplementedError

    @property
    def where(self) -> str:
        return self.settings.redacted_url

    def check_status(self, reply: Reply, what: str, ok: tuple[int, ...] = ()) -> None:
        code = reply.status
        if 200 <= code < 300 or code in ok:
            return
        excerpt = body_excerpt(reply.body, self.settings)
        tail = f": {excerpt}" if excerpt else ""
        if code in (401, 403, 407):
            raise ProtocolError(f"{what}: HTTP {code}{tail}",
                                hint="the server or a proxy refused our credentials; check --header / LORAWF_TOKEN")
        if code == 413:
            raise ProtocolError(f"{what}: request too large for the server (HTTP 413){tail}")
        if code >= 500:
            raise ProtocolError(f"{what}: server error (HTTP {code}){tail}")
        raise ProtocolError(f"{what}: unexpected HTTP {code}{tail}")

    def json_of(self, reply: Reply, what: str) -> Any:
        try:
            return json.loads(reply.body)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"{what}: server sent malformed JSON (HTTP {reply.status})") from None

    async def request(self, method: str, path: str, *, what: str | None = None, json_body: Any = None) -> Reply:
        """Send one request; transport failures are :class:`ServerUnreachable`, bad statuses ProtocolError."""
        what = what or f"{method} {path}"
        reply = await self.call(method, path, what=what, json_body=json_body)
        self.check_status(reply, what)
        return reply

    async def get_json(self, path: str) -> Any:
        what = f"GET {path}"
        return self.json_of(await self.request("GET", path, what=what), what)

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
        reply = await self.call("POST", "/prompt", what=what, json_body=body)
        if reply.status == 400:
            data = self.json_of(reply, what)
            if not isinstance(data, Mapping):
                raise ProtocolError(f"{what}: HTTP 400 with an unexpected body")
            raise rejection(400, data.get("error"), parse_node_errors(data.get("node_errors"), workflow))
        self.check_status(reply, what)
        data = self.json_of(reply, what)
        if not isinstance(data, Mapping) or not isinstance(data.get("prompt_id"), str):
            raise ProtocolError(f"{what}: answer has no prompt_id",
                                hint=f"it may still have been queued as {prompt_id}; see `lorawf watch {prompt_id}`")
        return SubmitResult(data["prompt_id"], data.get("number"),
                            parse_node_errors(data.get("node_errors"), workflow))

    async def post_empty(self, path: str, body: Mapping[str, Any]) -> None:
        """POSTs that answer an empty 200 (``/queue``, ``/interrupt``): never parse their body."""
        await self.request("POST", path, json_body=dict(body))
