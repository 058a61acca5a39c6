"""Async ComfyUI client: submit a workflow, follow it to the end, never lose a result.

This module only moves bytes: HTTP with httpx, the websocket with ``websockets``. All protocol decisions
about what a message means live in :mod:`lorawf.comfy.events` (a pure fold). The algorithm is the one in the
protocol notes' summary:

1. connect ``/ws?clientId=<fresh uuid4 hex>`` and wait for the first ``status`` frame carrying ``sid``;
2. ``POST /prompt`` with the graph, the ``client_id`` and a client-made canonical ``prompt_id``
   (the answer's id is authoritative);
3. fold every websocket message for that prompt; poll ``/history/{id}`` and ``/queue`` whenever the socket
   has been silent for a few seconds, right after connecting and after every drop;
4. reconnect with backoff and the *same* clientId, only after the old socket is fully closed;
5. finish only when ``/history/{id}`` confirms the outcome; a prompt that is neither queued, running nor in
   history is :class:`~lorawf.errors.PromptLost`.

Public entry points: :func:`submit_and_wait`, :func:`watch_prompt`, :func:`cancel_prompt`,
:func:`download_outputs`, :func:`fetch_queue`, :func:`fetch_object_info`, :func:`fetch_system_stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from lorawf import __version__
from lorawf.comfy.events import (
    DEFAULT_LOOP_CLASSES,
    CancelDone,
    Download,
    Event,
    OutputFile,
    Preview,
    Queued,
    RunState,
    WarningEvent,
    first_line,
    node_title,
    parse_binary_frame,
)
from lorawf.errors import (
    Cancelled,
    LorawfError,
    PromptLost,
    ProtocolError,
    ServerError,
    ServerRejected,
    ServerUnreachable,
    UsageError,
    WaitTimeout,
)
from lorawf.fsutil import atomic_write_bytes, sha256_file
from lorawf.net import bulk_get
from lorawf.net.settings import ServerSettings
from lorawf.safepaths import UnsafePath, free_name, is_within, local_path, partial_path

if TYPE_CHECKING:
    from typing_extensions import Self

#: Websocket message size limit: far above the library's 1 MiB (full-size PNG frames, big ``executed``).
WS_MAX_SIZE = 256 * 1024 * 1024
#: Tries per output file; each retry resumes the partial file.
DOWNLOAD_ATTEMPTS = 4
#: Websocket messages buffered between the reader and the fold; beyond it the reader waits (flat memory).
INBOX_SIZE = 4096
#: Seconds of socket silence (for our prompt) after which ``/history`` and ``/queue`` are polled.
POLL_INTERVAL = 3.0
USER_AGENT = f"lorawf/{__version__}"

Sink = Callable[[Event], None]


# ------------------------------------------------------------------------------------ rejection (400)


@dataclass(frozen=True)
class NodeError:
    """One entry of ``node_errors[<id>].errors[]`` of a 400 (or 200) answer to ``POST /prompt``."""

    node: str
    class_type: str | None
    title: str | None
    type: str
    message: str
    details: str
    input_name: str | None = None
    received: Any = None
    limit: str | None = None
    dependent_outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "class_type": self.class_type, "title": self.title, "type": self.type,
                "message": self.message, "details": self.details, "input_name": self.input_name,
                "received": self.received, "limit": self.limit,
                "dependent_outputs": list(self.dependent_outputs)}

    def hint(self) -> str | None:
        if self.type == "value_not_in_list":
            if self.input_name and (self.input_name.endswith("_name") or self.input_name in
                                    ("transformer", "vae", "clip_l", "t5", "ckpt_name", "lora_name")):
                return "file not found on server; see GET /models/<folder> or /object_info"
            return f"allowed: {self.limit}" if self.limit else None
        if self.type == "required_input_missing":
            return f"add the input {self.input_name!r}" if self.input_name else None
        if self.type == "return_type_mismatch":
            return "the linked output has a different type"
        return None


def _limit_from_config(etype: str, config: Any) -> str | None:
    if not isinstance(config, list) or not config:
        return None
    if etype == "value_not_in_list":
        options = config[0] if isinstance(config[0], list) else None
        if options is None and len(config) > 1 and isinstance(config[1], Mapping):
            options = config[1].get("options")
        if isinstance(options, list):
            shown = ", ".join(repr(o) for o in options[:10])
            return f"[{shown}{', ...' if len(options) > 10 else ''}]"
        return None
    opts = config[1] if len(config) > 1 and isinstance(config[1], Mapping) else {}
    if etype == "value_smaller_than_min" and "min" in opts:
        return f"min {opts['min']}"
    if etype == "value_bigger_than_max" and "max" in opts:
        return f"max {opts['max']}"
    return None


def parse_node_errors(node_errors: Any, workflow: Mapping[str, Any] | None) -> list[NodeError]:
    """Flatten ``node_errors`` into :class:`NodeError` entries (tolerates the old list form)."""
    out: list[NodeError] = []
    if not isinstance(node_errors, Mapping):
        return out
    for node, entry in node_errors.items():
        if not isinstance(entry, Mapping):
            continue
        class_type = entry.get("class_type")
        deps = tuple(str(d) for d in entry.get("dependent_outputs") or [])
        title = node_title(workflow, str(node)) if workflow and str(node) in workflow else None
        for err in entry.get("errors") or []:
            if not isinstance(err, Mapping):
                continue
            extra_info = err.get("extra_info")
            extra: Mapping[str, Any] = extra_info if isinstance(extra_info, Mapping) else {}
            etype = str(err.get("type") or "")
            out.append(NodeError(
                str(node), None if class_type is None else str(class_type), title, etype,
                str(err.get("message") or ""), str(err.get("details") or ""),
                extra.get("input_name"), extra.get("received_value"),
                _limit_from_config(etype, extra.get("input_config")), deps,
            ))
    return out


def render_node_errors(errors: Sequence[NodeError]) -> list[str]:
    """The indented lines of the protocol notes' §3 ("What a client should print")."""
    lines: list[str] = []
    last_node: str | None = None
    for err in errors:
        if err.node != last_node:
            head = f"  node {err.node} {err.class_type or ''}".rstrip()
            if err.title and err.title != err.class_type:
                head += f' "{err.title}"'
            if err.dependent_outputs:
                head += f" (blocks output {', '.join(err.dependent_outputs)})"
            lines.append(head + ":")
            last_node = err.node
        text = err.message + (f": {err.details}" if err.details else "")
        if err.received is not None and err.type != "value_not_in_list":
            text += f"   (received {err.received!r})"
        lines.append(f"    - {text}")
        hint = err.hint()
        if hint:
            lines.append(f"      hint: {hint}")
    return lines


_TYPE_HINTS = {
    "invalid_prompt": "custom node not installed?",
    "missing_node_type": "custom node not installed?",
    "prompt_no_outputs": "add an output node such as SaveImage or PreviewAny",
    "no_prompt": "the request had no prompt",
}


class PromptRejected(ServerRejected):
    """``POST /prompt`` answered 400: nothing was queued. Carries ``error`` and every node error."""

    def __init__(self, status: int, error: Any, node_errors: list[NodeError]) -> None:
        self.status = status
        self.error = error
        self.node_errors = node_errors
        if isinstance(error, Mapping):
            self.error_type = str(error.get("type") or "")
            self.error_message = str(error.get("message") or "")
            self.error_details = str(error.get("details") or "")
        else:
            self.error_type, self.error_message, self.error_details = "", str(error or ""), ""
        kind = f", {self.error_type}" if self.error_type else ""
        summary = f"prompt rejected (HTTP {status}{kind}): {self.error_message or 'no reason given'}"
        super().__init__(summary)
        self.summary = summary

    def lines(self) -> list[str]:
        """Summary line then indented node errors and hints."""
        lines = [self.summary]
        if self.node_errors:
            lines += render_node_errors(self.node_errors)
        elif self.error_details and self.error_details != self.error_message:
            lines.append(f"  {self.error_details}")
        hint = _TYPE_HINTS.get(self.error_type)
        if hint:
            lines.append(f"  hint: {hint}")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


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


def _scrub(text: str, settings: ServerSettings) -> str:
    for secret in settings.secret_values():
        if secret:
            text = text.replace(secret, "***")
    return text


def _body_excerpt(resp: httpx.Response, settings: ServerSettings) -> str:
    try:
        text = resp.text
    except Exception:  # noqa: BLE001 - undecodable body: say nothing about it
        return ""
    line = first_line(text.replace("\r", "\n"))
    if line.lower().startswith("500 internal server error"):
        rest = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        line = f"{line}: {rest[0]}" if rest else line
    return _scrub(line[:200], settings)


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
        return ServerUnreachable(_scrub(f"cannot reach {self.where} ({what}): {reason}", self.settings))

    async def request(self, method: str, path: str, *, what: str | None = None, **kwargs: Any) -> httpx.Response:
        """Send one request; transport failures are :class:`ServerUnreachable`, bad statuses ProtocolError."""
        what = what or f"{method} {path}"
        try:
            resp = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None
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

    async def get_queue(self) -> dict[str, Any]:
        body = await self.get_json("/queue")
        if not isinstance(body, dict):
            raise ProtocolError("GET /queue: expected a JSON object")
        return body

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
        try:
            resp = await self.http.post("/prompt", json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None
        if resp.status_code == 400:
            data = self.json_of(resp, what)
            if not isinstance(data, Mapping):
                raise ProtocolError(f"{what}: HTTP 400 with an unexpected body")
            raise PromptRejected(400, data.get("error"), parse_node_errors(data.get("node_errors"), workflow))
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
        try:
            with open(local, "rb") as handle:  # noqa: ASYNC230 - httpx streams the file in chunks
                resp = await self.http.post("/upload/image", data=data,
                                            files={"image": (name, handle, "application/octet-stream")})
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None
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
        try:
            async with self.http.stream("GET", "/view", params=params, headers={"Range": "bytes=0-0"}) as resp:
                if resp.status_code == 404:
                    return None
                self.check_status(resp, what)
                rng = resp.headers.get("Content-Range", "")
                if resp.status_code == 206 and "/" in rng and rng.rsplit("/", 1)[1].isdigit():
                    return int(rng.rsplit("/", 1)[1])
                length = resp.headers.get("Content-Length")
                return int(length) if length and length.isdigit() else None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None

    async def read_small(self, filename: str, subfolder: str, kind: str = "input",
                         limit: int = 8 << 20) -> bytes | None:
        """A small server file's bytes (e.g. a manifest), ``None`` if it does not exist."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        what = f"GET /view {filename!r}"
        try:
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
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None


# ------------------------------------------------------------------------------------- websocket


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
        # A bounded inbox: when the server outpaces us, the reader waits and the backlog stays in TCP.
        if isinstance(frame, (bytes, bytearray, memoryview)):
            await self.inbox.put(("bin", bytes(frame)))
            return
        try:
            msg = json.loads(frame)
        except ValueError:
            await self.inbox.put(("bad", "a websocket text frame was not valid JSON"))
            return
        if isinstance(msg, dict):
            await self.inbox.put(("msg", msg))

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
            raise ServerUnreachable(_scrub(f"cannot reach {self.settings.redacted_url} (websocket /ws): {reason}",
                                           self.settings)) from None
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
        delays = [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0]
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
                    await asyncio.sleep(delays[0])
            try:
                ws = self._ws = await self._connect_once()
                attempt = 0
                await self.inbox.put(("reconnected", None))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - server down or restarting: back off and retry
                await asyncio.sleep(delays[min(attempt, len(delays) - 1)])
                attempt += 1

    async def cycle(self) -> None:
        """Close cleanly and reconnect with the same clientId (re-registers a silently dropped sid)."""
        if self._ws is not None and not self._cycling:
            self._cycling = True
            await self._ws.close()

    async def close(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# ------------------------------------------------------------------------------------- the waiter


@dataclass
class WaitOptions:
    """How to wait. ``timeout`` is the opt-in overall limit; there is no per-message idle timeout."""

    timeout: float | None = None
    poll_interval: float = POLL_INTERVAL
    resubscribe_after: float = 60.0
    grace: float = 300.0
    previews_dir: Path | None = None
    loop_classes: frozenset[str] = DEFAULT_LOOP_CLASSES

    @classmethod
    def from_env(cls, **kwargs: Any) -> WaitOptions:
        """Defaults, with test/tuning overrides from ``LORAWF_POLL_INTERVAL`` and ``LORAWF_RETRY_GRACE``."""
        opts = cls(**kwargs)
        for env, attr in (("LORAWF_POLL_INTERVAL", "poll_interval"), ("LORAWF_RETRY_GRACE", "grace")):
            raw = os.environ.get(env)
            if raw:
                with contextlib.suppress(ValueError):
                    setattr(opts, attr, max(0.05, float(raw)))
        return opts


@dataclass
class RunResult:
    """How a wait ended. ``outcome`` is success, failed, interrupted or submitted (``--no-wait``)."""

    prompt_id: str
    outcome: str
    state: RunState
    message: str
    files: list[OutputFile] = field(default_factory=list)
    number: float | None = None


class _Waiter:
    def __init__(self, client: ComfyClient, socket: EventSocket | None, state: RunState, sink: Sink,
                 options: WaitOptions, inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        self.client = client
        self.socket = socket
        self.state = state
        self.sink = sink
        self.options = options
        self.inbox = inbox
        self.trouble_since: float | None = None
        self.previews = 0
        self.getter: asyncio.Future[tuple[str, Any]] | None = None
        self.drained = 0

    def emit(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Preview) and event.path is None:
                continue  # previews are only reported when saved
            self.sink(event)

    def warn(self, code: str, message: str) -> None:
        self.sink(WarningEvent(self.state.prompt_id, code, message))

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.options.timeout if self.options.timeout else None
        last_relevant = last_poll = start
        await self.poll()
        last_poll = loop.time()
        while not self.state.confirmed:
            now = loop.time()
            if deadline is not None and now >= deadline:
                where = {"queued": "still queued", "running": "still running"}.get(self.state.phase, "not finished")
                raise WaitTimeout(f"gave up waiting after {self.options.timeout:g} s; prompt "
                                  f"{self.state.prompt_id} is {where} on the server",
                                  hint=f"`lorawf watch {self.state.prompt_id}` to follow it again")
            if self.socket and self.socket.connected and self.state.phase == "running" and \
                    now - last_relevant >= self.options.resubscribe_after:
                last_relevant = now
                await self.socket.cycle()
            wait = self.options.poll_interval - (now - max(last_relevant, last_poll))
            if deadline is not None:
                wait = min(wait, deadline - now)
            if wait <= 0:
                await self.poll()
                last_poll = loop.time()
                continue
            item = await self.next_item(wait)
            if item is None:
                continue
            kind, payload = item
            if kind == "msg":
                events = self.state.feed(payload)
                self.emit(events)
                data = payload.get("data")
                if events or (isinstance(data, dict) and data.get("prompt_id") == self.state.prompt_id):
                    last_relevant = loop.time()
                if self.state.outcome is not None or self.state.done_signal:
                    await self.confirm()
            elif kind == "bin":
                self.on_binary(payload)
            elif kind == "closed":
                self.warn("connection_lost", f"websocket {payload}; reconnecting with the same clientId")
                await self.poll()
                last_poll = loop.time()
            elif kind == "reconnected":
                self.warn("reconnected", "websocket reconnected")
                await self.poll()
                last_poll = last_relevant = loop.time()
            elif kind == "bad":
                self.warn("bad_message", str(payload))

    async def next_item(self, wait: float) -> tuple[str, Any] | None:
        """The next inbox item, or ``None`` after ``wait`` seconds.

        ``asyncio.wait`` rather than ``wait_for``: on Python < 3.12, ``wait_for`` can swallow a
        cancellation (our Ctrl-C) when the item arrives at the same moment.
        """
        if self.getter is None:
            # Fast path for a backlog: no future per message. Yield now and then so Ctrl-C gets through.
            self.drained += 1
            if self.drained % 256 == 0:
                await asyncio.sleep(0)
            try:
                return self.inbox.get_nowait()
            except asyncio.QueueEmpty:
                pass
            self.getter = asyncio.ensure_future(self.inbox.get())
        done, _ = await asyncio.wait({self.getter}, timeout=wait)
        if not done:
            return None
        item, self.getter = self.getter.result(), None
        return item

    def close(self) -> None:
        if self.getter is not None:
            self.getter.cancel()
            self.getter = None

    def on_binary(self, frame: bytes) -> None:
        header = parse_binary_frame(frame)
        if header is None:
            self.warn("bad_message", f"ignored a malformed binary frame of {len(frame)} bytes")
            return
        events = self.state.feed_binary(header)
        if events and self.options.previews_dir is not None:
            self.previews += 1
            ext = {"image/png": "png", "image/jpeg": "jpg"}.get(header.image_type or "", "bin")
            path = Path(self.options.previews_dir) / f"preview_{self.state.prompt_id[:8]}_{self.previews:05d}.{ext}"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, frame[header.payload_offset:])
            except OSError as exc:
                self.warn("preview_not_saved", f"cannot save preview {path}: {exc.strerror or exc}")
                return
            ev = events[0]
            assert isinstance(ev, Preview)
            self.sink(Preview(ev.prompt_id, ev.node, ev.image_type, ev.bytes, str(path)))

    async def confirm(self) -> None:
        """After a terminal event: read the outcome from history (retrying while it is still ``{}``)."""
        delay = 0.05
        for _ in range(40):
            entry = await self.guarded(self.client.get_history(self.state.prompt_id))
            if entry:
                self.emit(self.state.feed_history(entry))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        await self.poll()

    async def guarded(self, coro: Any) -> Any:
        """Await a poll request; transient failures are tolerated for ``grace`` seconds."""
        try:
            result = await coro
        except (ServerUnreachable, ProtocolError) as exc:
            now = asyncio.get_running_loop().time()
            if self.trouble_since is None:
                self.trouble_since = now
                self.warn("server_trouble", f"{exc}; retrying")
            elif now - self.trouble_since > self.options.grace:
                raise
            return None
        if self.trouble_since is not None:
            self.trouble_since = None
            self.warn("server_back", "the server answers again")
        return result

    async def poll(self) -> None:
        """Backstop: history first, then the queue; in neither means lost."""
        pid = self.state.prompt_id
        entry = await self.guarded(self.client.get_history(pid))
        if entry:
            self.emit(self.state.feed_history(entry))
            return
        if self.trouble_since is not None:
            return
        queue = await self.guarded(self.client.get_queue())
        if queue is None:
            return
        where = self.state.in_queue(queue)
        self.emit(self.state.feed_queue(queue))
        if where is None:
            entry = await self.guarded(self.client.get_history(pid))  # it may have just finished
            if entry:
                self.emit(self.state.feed_history(entry))
                return
            if self.trouble_since is None:
                raise PromptLost(
                    f"prompt {pid} is lost: it is neither queued, running nor in the history of "
                    f"{self.client.where}",
                    hint="the server restarted, or the prompt was deleted from the queue",
                )


def _result(state: RunState, number: float | None = None) -> RunResult:
    outcome = state.outcome or "failed"
    return RunResult(state.prompt_id, outcome, state, state.describe_outcome(), state.files(), number)


async def _cancel_after_interrupt(client: ComfyClient, state: RunState, sink: Sink) -> Cancelled:
    """Ctrl-C while waiting: cancel our prompt, report what was done, return the error to raise."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()
    try:
        action, message = await cancel_prompt(client, state.prompt_id)
    except LorawfError as exc:
        return Cancelled(f"stopped waiting, but could not cancel prompt {state.prompt_id}: {exc}")
    sink(CancelDone(state.prompt_id, action, message))
    if action == "interrupted":
        entry = None
        with contextlib.suppress(LorawfError):
            entry = await client.get_history(state.prompt_id)
        if entry:
            state.feed_history(entry)
    return Cancelled(message)


def _check_extra_data(extra_data: Mapping[str, Any] | None, sink: Sink, prompt_id: str) -> dict[str, Any] | None:
    if not extra_data:
        return None
    data = dict(extra_data)
    pnginfo = data.get("extra_pnginfo")
    if pnginfo is not None and not (isinstance(pnginfo, Mapping) and isinstance(pnginfo.get("workflow"), Mapping)):
        # FluxTrainer's Init node fails with KeyError: 'workflow' on such an extra_pnginfo.
        del data["extra_pnginfo"]
        sink(WarningEvent(prompt_id, "extra_pnginfo_dropped",
                          "extra_pnginfo without a 'workflow' object was not sent (FluxTrainer fails on it)"))
    return data or None


async def submit_and_wait(
    settings: ServerSettings,
    workflow: Mapping[str, Any],
    sink: Sink,
    *,
    wait: bool = True,
    options: WaitOptions | None = None,
    extra_data: Mapping[str, Any] | None = None,
) -> RunResult:
    """Submit an API-format ``workflow`` and (unless ``wait`` is false) follow it to its confirmed end.

    Every step is reported to ``sink`` as an :class:`~lorawf.comfy.events.Event` (the caller emits ``done``).
    Returns for success, failed and interrupted runs; raises :class:`PromptRejected` (400),
    :class:`ServerUnreachable`, :class:`ProtocolError`, :class:`PromptLost`, :class:`WaitTimeout`, and
    :class:`Cancelled` after cancelling our prompt when the waiting task is cancelled (Ctrl-C).
    """
    options = options or WaitOptions()
    client_id = uuid.uuid4().hex
    prompt_id = str(uuid.uuid4())
    extra = _check_extra_data(extra_data, sink, prompt_id)
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(INBOX_SIZE)
    async with ComfyClient(settings) as client:
        socket = EventSocket(settings, client_id, client.ssl_context, inbox) if wait else None
        state = RunState(prompt_id, workflow, loop_classes=options.loop_classes)
        submitted = False
        try:
            if socket is not None:
                await socket.open()
            submitted = True  # from here on, the server may have our prompt: a Ctrl-C must cancel it
            result = await client.post_prompt(workflow, client_id, prompt_id, extra)
            if result.prompt_id != prompt_id:  # old servers ignore ours: theirs is authoritative
                state = RunState(result.prompt_id, workflow, loop_classes=options.loop_classes)
            state.number = result.number
            sink(Queued(state.prompt_id, result.number, None))
            if result.node_errors:
                lines = render_node_errors(result.node_errors)
                sink(WarningEvent(state.prompt_id, "node_errors",
                                  "some outputs failed validation and will not run: "
                                  + "; ".join(line.strip() for line in lines)))
            if not wait:
                return RunResult(state.prompt_id, "submitted", state,
                                 f"prompt {state.prompt_id} queued (number {result.number})", [], result.number)
            await _Waiter(client, socket, state, sink, options, inbox).run()
            return _result(state, result.number)
        except asyncio.CancelledError:
            if not submitted:
                raise Cancelled("cancelled before anything was submitted") from None
            raise await _cancel_after_interrupt(client, state, sink) from None
        finally:
            if socket is not None:
                await socket.close()


async def watch_prompt(settings: ServerSettings, prompt_id: str, sink: Sink, *,
                       options: WaitOptions | None = None) -> RunResult:
    """Follow a prompt someone already queued: report it from history if finished, else wait for its end.

    The websocket reuses the prompt's own ``client_id`` (from ``/queue``), because run events go only to
    that id; the ``/history`` + ``/queue`` backstop guarantees the end even if the original submitter is
    still connected. Cancelling this coroutine only stops watching.
    """
    options = options or WaitOptions()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(INBOX_SIZE)
    async with ComfyClient(settings) as client:
        entry = await client.get_history(prompt_id)
        if entry:
            workflow = _workflow_of(entry.get("prompt"))
            state = RunState(prompt_id, workflow, loop_classes=options.loop_classes)
            sink_all(sink, state.feed_history(entry))
            return _result(state)
        queue = await client.get_queue()
        item = next((it for key in ("queue_running", "queue_pending") for it in queue.get(key) or []
                     if isinstance(it, list) and len(it) >= 2 and it[1] == prompt_id), None)
        if item is None:
            entry = await client.get_history(prompt_id)
            if not entry:
                raise PromptLost(f"prompt {prompt_id} is not queued, running or in the history of {client.where}")
            state = RunState(prompt_id, _workflow_of(entry.get("prompt")), loop_classes=options.loop_classes)
            sink_all(sink, state.feed_history(entry))
            return _result(state)
        state = RunState(prompt_id, _workflow_of(item), loop_classes=options.loop_classes)
        state.number = item[0]
        extra = item[3] if len(item) > 3 and isinstance(item[3], Mapping) else {}
        client_id = str(extra.get("client_id") or uuid.uuid4().hex)
        socket: EventSocket | None = EventSocket(settings, client_id, client.ssl_context, inbox)
        try:
            assert socket is not None
            try:
                await socket.open()
            except ServerError as exc:
                sink(WarningEvent(prompt_id, "no_websocket", f"{exc}; following by polling only"))
                socket = None
            await _Waiter(client, socket, state, sink, options, inbox).run()
            return _result(state, state.number)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            raise Cancelled(f"stopped watching; prompt {prompt_id} continues on the server",
                            hint=f"`lorawf cancel {prompt_id}` cancels it") from None
        finally:
            if socket is not None:
                await socket.close()


def sink_all(sink: Sink, events: Sequence[Event]) -> None:
    for event in events:
        sink(event)


def _workflow_of(item: Any) -> dict[str, Any] | None:
    if isinstance(item, list) and len(item) > 2 and isinstance(item[2], dict):
        return item[2]
    return None


# ----------------------------------------------------------------------------------------- cancel


async def cancel_prompt(client: ComfyClient, prompt_id: str, *, settle: float = 10.0) -> tuple[str, str]:
    """Cancel one prompt: delete it if pending, interrupt it *by id* if running (never a global interrupt).

    Returns ``(action, message)`` with action ``deleted``, ``interrupted`` or ``none``.
    Raises :class:`PromptLost` when the id is unknown to the server.
    """
    state = RunState(prompt_id)
    queue = await client.get_queue()
    where = state.in_queue(queue)
    if where == "pending":
        await client.post_empty("/queue", {"delete": [prompt_id]})
        queue = await client.get_queue()
        where = state.in_queue(queue)
        if where is None:
            return "deleted", f"removed pending prompt {prompt_id} from the queue"
    if where == "running":
        await client.post_empty("/interrupt", {"prompt_id": prompt_id})
        loop = asyncio.get_running_loop()
        end = loop.time() + settle
        while loop.time() < end:
            await asyncio.sleep(0.1)
            if state.in_queue(await client.get_queue()) != "running":
                return "interrupted", f"interrupted running prompt {prompt_id}"
        return "interrupted", f"sent an interrupt to running prompt {prompt_id} (it has not stopped yet)"
    if where == "pending":
        return "none", f"prompt {prompt_id} is still pending after a delete request"
    entry = await client.get_history(prompt_id)
    if entry:
        raw_status = entry.get("status")
        status: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
        return "none", f"prompt {prompt_id} already finished ({status.get('status_str', 'done')}); nothing to cancel"
    raise PromptLost(f"prompt {prompt_id} is not queued, running or in the history of {client.where}")


# ---------------------------------------------------------------------------------------- downloads


def _same_content(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def _place(part: Path, final: Path) -> tuple[Path, str]:
    """Move a complete download to ``final`` without ever overwriting a different existing file."""
    for _ in range(100):
        if final.exists():
            if _same_content(final, part):
                part.unlink()
                return final, "same"
            final = free_name(final, lambda p: p.exists())
        try:
            os.link(part, final)  # fails if the name appeared meanwhile: no silent overwrite
        except FileExistsError:
            continue
        except OSError:
            if final.exists():
                continue
            os.replace(part, final)
            return final, "saved"
        part.unlink()
        return final, "saved"
    raise OSError(f"cannot find a free name for {final}")


async def download_file(client: ComfyClient, ref: OutputFile, dest: Path, prompt_id: str,
                        local: Path | None = None) -> Download:
    """Stream one output via ``/view`` into ``dest`` (flat memory; resumable ``.part``; no overwrite).

    ``local`` (inside ``dest``) overrides the default local path ``dest/<subfolder>/<filename>``.
    """
    final = local if local is not None else local_path(dest, ref.subfolder, ref.filename, ref.type)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not is_within(final.parent.resolve(), Path(dest).resolve()):
        raise UnsafePath(f"{ref.subfolder!r} leads outside {dest} (symlink)")
    part = partial_path(final)
    tag_file = part.with_name(part.name + ".etag")
    offset = part.stat().st_size if part.exists() else 0
    headers: dict[str, str] = {}
    if offset and tag_file.exists():
        headers = {"Range": f"bytes={offset}-", "If-Range": tag_file.read_text(encoding="utf-8").strip()}
    params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
    what = f"GET /view {ref.filename!r}"
    status = "saved"
    try:
        bulk = await _bulk_download(client, params, headers, part, tag_file, offset, what)
    except bulk_get.Unsupported:
        bulk = None
    if bulk is not None:
        status, expected, written = bulk
    else:
        status, expected, written = await _httpx_download(client, params, headers, part, tag_file, what)
    if expected is not None and expected.isdigit() and written != int(expected):
        raise ProtocolError(f"{what}: download incomplete ({written} of {expected} bytes); run again to resume")
    tag_file.unlink(missing_ok=True)
    placed, placed_status = _place(part, final)
    return Download(prompt_id, ref.filename, ref.subfolder, ref.type, str(placed), placed.stat().st_size,
                    "same" if placed_status == "same" else status)


def _remember_etag(tag_file: Path, etag: str | None) -> None:
    """Keep the ETag beside a fresh ``.part`` file, so an interrupted download can be resumed safely."""
    if etag:
        tag_file.write_text(etag, encoding="utf-8")
    else:
        tag_file.unlink(missing_ok=True)


async def _bulk_download(client: ComfyClient, params: dict[str, str], headers: dict[str, str], part: Path,
                         tag_file: Path, offset: int, what: str) -> tuple[str, str | None, int]:
    """The fast path (:mod:`lorawf.net.bulk_get`, in a worker thread); raises ``Unsupported`` to fall back."""
    stop = threading.Event()
    all_headers = {"User-Agent": USER_AGENT, **client.settings.request_headers(), **headers}
    def on_head(head: bulk_get.Head) -> None:
        if not (head.status == 206 and headers):
            _remember_etag(tag_file, head.headers.get("etag"))

    try:
        head, written = await asyncio.to_thread(
            bulk_get.get_to_file, client.settings.base_url, "/view", params, all_headers, client.ssl_context,
            str(part), offset if headers else 0, stop, 60.0, on_head)
    except asyncio.CancelledError:
        stop.set()  # the worker thread stops at its next chunk
        raise
    except bulk_get.Interrupted as exc:
        raise ServerUnreachable(_scrub(f"cannot reach {client.where} ({what}): {exc}", client.settings)) from None
    if head.status not in (200, 206):
        client.check_status(httpx.Response(head.status, headers=dict(head.headers), content=head.body_start), what)
    resumed = head.status == 206 and bool(headers)
    return ("resumed" if resumed else "saved"), head.headers.get("content-length"), written


async def _httpx_download(client: ComfyClient, params: dict[str, str], headers: dict[str, str], part: Path,
                          tag_file: Path, what: str) -> tuple[str, str | None, int]:
    """The general path (proxies, chunked answers): httpx streaming, flat memory."""
    status = "saved"
    try:
        async with client.http.stream("GET", "/view", params=params, headers=headers) as resp:
            client.check_status(resp, what)
            if resp.status_code == 206 and headers:
                mode, status = "ab", "resumed"
            else:
                mode = "wb"
                _remember_etag(tag_file, resp.headers.get("ETag"))
            expected = resp.headers.get("Content-Length")
            written = 0
            with open(part, mode) as handle:  # noqa: ASYNC230 - local disk, chunked: fine for a CLI
                async for chunk in resp.aiter_bytes():  # as received: a cut keeps what arrived
                    handle.write(chunk)
                    written += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
    except httpx.HTTPError as exc:
        raise client._unreachable(exc, what) from None
    return status, expected, written


async def download_outputs(settings: ServerSettings, files: Sequence[OutputFile], dest: Path, sink: Sink,
                           prompt_id: str, *, local_for: Callable[[OutputFile], Path] | None = None,
                           attempts: int = DOWNLOAD_ATTEMPTS) -> list[str]:
    """Download every file; returns one problem line per file that could not be saved (never raises for one).

    ``local_for`` picks each file's local path inside ``dest`` (default ``dest/<subfolder>/<filename>``).
    A connection cut mid-file is retried up to ``attempts`` times, resuming the ``.part`` file with ``Range``.
    """
    problems: list[str] = []
    async with ComfyClient(settings) as client:
        for ref in files:
            try:
                local = local_for(ref) if local_for is not None else None
                for attempt in range(attempts):
                    try:
                        sink(await download_file(client, ref, dest, prompt_id, local=local))
                        break
                    except (ServerUnreachable, ProtocolError) as exc:
                        if attempt + 1 == attempts:
                            raise
                        sink(WarningEvent(prompt_id, "download_retry", f"{ref.filename}: {exc}; resuming"))
                        await asyncio.sleep(0.5 * (attempt + 1))
            except UnsafePath as exc:
                problems.append(f"unsafe output name from server refused: {exc}")
                sink(WarningEvent(prompt_id, "unsafe_filename", f"not downloaded: {exc}"))
            except (LorawfError, OSError) as exc:
                text = str(exc) if isinstance(exc, LorawfError) else f"{ref.filename}: {exc.strerror or exc}"
                problems.append(text)
                sink(WarningEvent(prompt_id, "download_failed", text))
    return problems


# ------------------------------------------------------------------------------------ simple reads


async def fetch_queue(settings: ServerSettings) -> dict[str, Any]:
    """``GET /queue``."""
    async with ComfyClient(settings) as client:
        return await client.get_queue()


async def _fetch_object(settings: ServerSettings, path: str) -> dict[str, Any]:
    async with ComfyClient(settings) as client:
        body = await client.get_json(path)
    if not isinstance(body, dict):
        raise ProtocolError(f"GET {path}: expected a JSON object")
    return body


async def fetch_object_info(settings: ServerSettings) -> dict[str, Any]:
    """``GET /object_info``: every node class the server knows."""
    return await _fetch_object(settings, "/object_info")


async def fetch_server_facts(settings: ServerSettings) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``/system_stats`` and ``/internal/folder_paths`` (``None`` when the server does not offer the latter)."""
    async with ComfyClient(settings) as client:
        stats = await client.get_json("/system_stats")
        try:
            paths = await client.get_json("/internal/folder_paths")
        except ProtocolError:
            paths = None
    if not isinstance(stats, dict):
        raise ProtocolError("GET /system_stats: expected a JSON object")
    return stats, paths if isinstance(paths, dict) else None


async def fetch_system_stats(settings: ServerSettings) -> dict[str, Any]:
    """``GET /system_stats``: server version, Python/torch versions and devices."""
    return await _fetch_object(settings, "/system_stats")


async def cancel(settings: ServerSettings, prompt_id: str) -> tuple[str, str]:
    """:func:`cancel_prompt` with its own connection (for ``lorawf cancel``)."""
    async with ComfyClient(settings) as client:
        return await cancel_prompt(client, prompt_id)
