"""How to reach a ComfyUI server: URL, extra headers, bearer token and TLS settings.

Secrets (token, header values) are kept here and only here; :meth:`ServerSettings.redacted_url` and
``repr`` never show them, so they cannot leak into output, logs, ``--json`` events or run records.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from lorawf.errors import UsageError
from lorawf.secrets import Secrets, check_credential

DEFAULT_SERVER = "http://127.0.0.1:8188"
ENV_SERVER = "LORAWF_SERVER"
ENV_TOKEN = "LORAWF_TOKEN"


def parse_header(raw: str) -> tuple[str, str]:
    """Parse ``'Name: value'`` from ``--header``; a malformed one is a usage error (value never echoed)."""
    name, sep, value = raw.partition(":")
    name = name.strip()
    if not sep:  # the whole text may be a secret (a bare token): do not echo it
        raise UsageError("--header: expected 'Name: value' (no ':' found)")
    if not name or any(c.isspace() for c in name):
        raise UsageError(f"--header {name or '?'!r}: expected 'Name: value' with a name without spaces")
    return name, check_credential(value, f"--header {name}")


@dataclass(frozen=True)
class ServerSettings:
    """Connection settings for one ComfyUI server. ``repr`` hides secrets."""

    url: str = field(default=DEFAULT_SERVER, repr=False)  # may hold user:password: see redacted_url
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    insecure: bool = False

    @classmethod
    def resolve(
        cls,
        server: str | None = None,
        headers: Iterable[str] = (),
        ca_bundle: str | None = None,
        insecure: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> ServerSettings:
        """Server from ``--server``, else ``LORAWF_SERVER``, else the local default; token from ``LORAWF_TOKEN``."""
        env = os.environ if environ is None else environ
        url = (server or env.get(ENV_SERVER) or DEFAULT_SERVER).strip()
        source = "--server" if server else (ENV_SERVER if env.get(ENV_SERVER) else "--server")
        expected = "expected http://HOST:PORT or https://HOST[:PORT]"
        if any(not c.isprintable() or c.isspace() for c in url):
            raise UsageError(f"{source}: the URL contains spaces or control characters; {expected}")
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            _ = parts.port  # a bad port raises here, not at the first request
        except ValueError as exc:  # e.g. 'Invalid IPv6 URL', 'Port out of range 0-65535'
            raise UsageError(f"{source}: {exc}; {expected}") from None
        parts = parts._replace(path=parts.path.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{source} {cls._redact(url)!r}: {expected}")
        if parts.query or parts.fragment:
            raise UsageError(f"{source} {cls._redact(url)!r}: a query string is not sent with every request; "
                             "pass credentials with --header 'Name: value' or LORAWF_TOKEN")
        parsed_headers = dict(parse_header(h) for h in headers)
        if parts.username is not None:
            # user:password in the URL becomes an explicit header, so every transport sends the same thing
            basic = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
            if not any(k.lower() == "authorization" for k in parsed_headers):
                parsed_headers["Authorization"] = f"Basic {basic}"
            host = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
            parts = parts._replace(netloc=f"{host}:{parts.port}" if parts.port else str(host))
        token = check_credential(env.get(ENV_TOKEN) or "", ENV_TOKEN) or None
        return cls(urlunsplit(parts), parsed_headers, token, ca_bundle, insecure)

    def __repr__(self) -> str:
        return f"ServerSettings(url={self.redacted_url!r}, ca_bundle={self.ca_bundle!r}, insecure={self.insecure})"

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def ws_url(self) -> str:
        """``ws://`` or ``wss://`` URL of the server root, following the HTTP scheme."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path, "", ""))

    def request_headers(self) -> dict[str, str]:
        """Headers for every HTTP request and the websocket handshake (contains secrets: never print)."""
        out = dict(self.headers)
        if self.token and not any(k.lower() == "authorization" for k in out):
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def secret_values(self) -> list[str]:
        """Every secret string, so output paths can scrub them defensively."""
        values = [v for v in self.headers.values() if v]
        if self.token:
            values.append(self.token)
        return values

    @property
    def secrets(self) -> Secrets:
        """The one scrubbing rule over :meth:`secret_values` (see :mod:`lorawf.secrets`)."""
        return Secrets.of(self.secret_values())

    @staticmethod
    def _redact(url: str) -> str:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts._replace(query="", fragment=""))

    @property
    def redacted_url(self) -> str:
        """The URL without user:password or query string: safe to print and to store in run records."""
        return self._redact(self.base_url)


def settings_from_env_names(url: str, *, token_env: str | None = None,
                            headers_env: Iterable[tuple[str, str]] = (), ca_bundle: str | None = None,
                            insecure: bool = False, where: str = "server",
                            environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Settings for a server whose credentials are named, not given: a sweep file's ``[[server]]`` names the
    environment variables that hold its token and header values (the file never holds a secret).

    ``LORAWF_TOKEN`` is not used here: each host has its own ``token_env``. A variable that is named but not
    set is a usage error that names the variable (never a value).
    """
    env = os.environ if environ is None else environ

    def value_of(var: str, what: str) -> str:
        raw = env.get(var)
        if raw is None or not raw.strip():
            raise UsageError(f"{where}: {what} names the environment variable {var}, which is not set; "
                             f"export {var}=... before running")
        return check_credential(raw, f"{where}: ${var}")

    headers = [f"{name}: {value_of(var, f'header {name}')}" for name, var in headers_env]
    settings = ServerSettings.resolve(url, headers, ca_bundle, insecure, environ={})
    if token_env:
        from dataclasses import replace

        settings = replace(settings, token=value_of(token_env, "token_env"))
    return settings
