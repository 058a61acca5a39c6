"""Options shared by several commands, defined once: server, following, planning overrides."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lorawf.training.families import FAMILIES, TRAINERS
from lorawf.training.overrides import OVERRIDE_NAMES

if TYPE_CHECKING:  # imported when a command runs, not for `lorawf --help`
    from lorawf.comfy.schema import SchemaSet
    from lorawf.net.settings import ServerSettings
    from lorawf.runs.engine import FollowOptions
    from lorawf.training.plan import PlanOverrides

F = Callable[..., Any]

_PROMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", re.ASCII)


class Seconds(click.ParamType[float]):
    """A finite number of seconds greater than 0 (``-5`` would give up at once, ``nan`` wait forever)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            seconds = value
        else:
            try:
                seconds = float(str(value).strip())
            except ValueError:
                self.fail(f"{str(value)[:40]!r} is not a number of seconds (try 3600)", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{seconds:g}: expected a number of seconds greater than 0 (try 3600)", param, ctx)
        return seconds


class PromptId(click.ParamType[str]):
    """A prompt id as ComfyUI and lorawf make them (a uuid): it goes into URLs, so nothing else gets in."""

    name = "prompt_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not _PROMPT_ID.fullmatch(text):
            from lorawf.printable import printable

            self.fail(f"{printable(text[:60])!r} is not a prompt id (expected something like "
                      "a5b7be84-2f71-4591-a8d8-2565ca19e04a; `lorawf queue` lists them)", param, ctx)
        return text


SECONDS = Seconds()
PROMPT_ID = PromptId()


def timeout_option(func: F) -> F:
    """``--timeout S``: the opt-in limit on waiting for the end."""
    return click.option("--timeout", type=SECONDS, default=None, metavar="S",
                        help="Give up waiting after S seconds (the prompt keeps running). Default: no limit.")(func)


@dataclass(frozen=True)
class ServerOptions:
    """What the user said about the server; :meth:`settings` resolves it (environment, defaults, secrets)."""

    server: str | None = None
    headers: tuple[str, ...] = ()
    ca_bundle: str | None = None
    insecure: bool = False

    def settings(self, fallback_url: str | None = None) -> ServerSettings:
        """``--server``, else ``fallback_url`` (a run record's server), else ``$LORAWF_SERVER``, else local."""
        from lorawf.net.settings import ServerSettings

        return ServerSettings.resolve(self.server or fallback_url, self.headers, self.ca_bundle, self.insecure)


SERVER_HELP = ("ComfyUI server (default: $LORAWF_SERVER, else http://127.0.0.1:8188). "
               "$LORAWF_TOKEN is sent as a bearer token.")


def server_options(func: F) -> F:
    """``--server``, ``--header`` (repeatable), ``--ca-bundle``, ``--insecure``: the command gets ``server``,
    one :class:`ServerOptions`, for every command that talks to a server."""
    return server_options_with(SERVER_HELP)(func)


def server_options_with(server_help: str) -> Callable[[F], F]:
    """:func:`server_options` with another help text for ``--server`` (where it has another default)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, server: str | None, headers: tuple[str, ...], ca_bundle: str | None,
                    insecure: bool, **kwargs: Any) -> Any:
            return command(*args, server=ServerOptions(server, headers, ca_bundle, insecure), **kwargs)

        wrapped: F = click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate.")(
            wrapper)
        wrapped = click.option("--ca-bundle", type=click.Path(dir_okay=False), default=None,
                               help="Extra CA certificates (PEM) to verify the server's TLS certificate.")(wrapped)
        wrapped = click.option("--header", "headers", multiple=True, metavar="'Name: value'",
                               help="Extra header on every HTTP request and the websocket handshake "
                                    "(repeatable).")(wrapped)
        return click.option("--server", default=None, metavar="URL", help=server_help)(wrapped)

    return decorate


def follow_options(func: F) -> F:
    """``--json``, ``--download``, ``--timeout``, ``--previews``, ``--verbose``."""
    func = click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")(func)
    func = click.option("--previews", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Save binary preview frames into this folder (default: ignore them).")(func)
    func = timeout_option(func)
    func = click.option("--download", type=click.Path(file_okay=False, path_type=Path), default=None,
                        metavar="DIR", help="Download every output file into DIR.")(func)
    func = click.option("--json", "json_mode", is_flag=True,
                        help="Print NDJSON events (schema lorawf.event/1); the last line is the outcome.")(func)
    return func


def follow_from(*, wait: bool = True, download: Path | None = None, timeout: float | None = None,
                previews: Path | None = None) -> FollowOptions:
    from lorawf.runs.engine import FollowOptions

    return FollowOptions(wait=wait, download=download, timeout=timeout, previews=previews)


MODEL_CHOICES = tuple(FAMILIES)  # --model
TRAINER_CHOICES = TRAINERS  # --trainer
RUN_TRAINER_CHOICES = ("auto", *TRAINER_CHOICES)  # run: auto = what the server can run


def plan_options(func: F) -> F:
    """The planning options shared by plan, patch and run: ``--model``, ``--images`` and :data:`OVERRIDE_NAMES`."""
    for spec in reversed(OVERRIDE_NAMES):
        func = click.option(spec.flag, spec.field, type=spec.type, help=spec.help)(func)
    func = click.option("--images", type=int,
                        help="Image count, when the dataset exists only on the GPU host.")(func)
    return click.option("--model", "model", type=click.Choice(MODEL_CHOICES),
                        help="Base-model family: Flux.1, SDXL or SD 3.5; picks the bundled template "
                             "(default: flux, or the family a --template trains).")(func)


def trainer_option(func: F) -> F:
    """``--trainer`` of ``plan``: FluxTrainer's nodes, or ComfyUI's own training nodes."""
    return click.option("--trainer", "trainer", type=click.Choice(TRAINER_CHOICES), default="fluxtrainer",
                        show_default=True,
                        help="FluxTrainer's node pack, or ComfyUI's native training nodes (no custom nodes; one "
                             "prompt per checkpoint).")(func)


def run_trainer_option(func: F) -> F:
    """``--trainer`` of ``run``: ``auto`` picks what the server can run."""
    return click.option("--trainer", "trainer", type=click.Choice(RUN_TRAINER_CHOICES), default="auto",
                        show_default=True,
                        help="FluxTrainer's node pack, ComfyUI's native training nodes (no custom nodes; one "
                             "prompt per checkpoint), or auto: FluxTrainer where the server has it, else native "
                             "(said when it happens).")(func)


def overrides_from(kwargs: dict[str, Any]) -> PlanOverrides:
    """Pop the planning options out of click's kwargs."""
    from lorawf.training.plan import PlanOverrides

    return PlanOverrides(**{spec.field: kwargs.pop(spec.field) for spec in OVERRIDE_NAMES})


def schema_options(func: F) -> F:
    """Where node schemas come from: ``--server`` (with the other server options), ``--object-info FILE``,
    ``--refresh-schemas``; the command gets ``server``, ``object_info`` and ``refresh_schemas``."""
    func = click.option("--refresh-schemas", is_flag=True, help="Refetch /object_info instead of using the cache.")(func)
    func = click.option("--object-info", "object_info", type=click.Path(path_type=Path, dir_okay=False),
                        help="Node schemas from a saved snapshot (see `lorawf object-info`).")(func)
    return server_options_with("Node schemas of a live server (cached per server and version); default: the "
                               "bundled snapshot. $LORAWF_TOKEN is sent as a bearer token.")(func)


def schemas_from(server: ServerOptions, object_info: Path | None, refresh: bool, *,
                 over_bundled: bool = False) -> SchemaSet:
    """Schemas from ``--object-info FILE``, a live ``--server`` (cached), or the bundled snapshot;
    ``over_bundled`` adds them to the bundled ones (a snapshot of another pack's nodes only is enough)."""
    from lorawf.comfy.schema import bundled_schemas, load_object_info_file
    from lorawf.errors import UsageError

    if server.server and object_info:
        raise UsageError("give either --server or --object-info, not both")
    if object_info is not None:
        found = load_object_info_file(object_info)
    elif server.server:
        from lorawf.net.schema_cache import server_schemas

        found = server_schemas(server.settings(), refresh=refresh)
    else:
        return bundled_schemas()
    return bundled_schemas().merged(found) if over_bundled else found
