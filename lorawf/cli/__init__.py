"""The ``lorawf`` command line: parse arguments, call the library, print. Nothing else lives here.

Heavy modules (httpx, websockets, the client) are imported inside the commands that need them, so
``lorawf --help`` and ``lorawf plan`` start fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NoReturn

import click

from lorawf import __version__
from lorawf.cli.output import say
from lorawf.errors import EXIT_CANCELLED, LorawfError, exit_code_for

#: The module (under ``lorawf.cli``) that defines each command: ``lorawf submit`` imports only
#: ``lorawf.cli.server``, not every command's module (start-up time, docs/bench.md).
COMMAND_MODULES = {
    "plan": "offline", "patch": "offline", "regen": "offline",
    "validate": "preflight", "convert": "preflight", "object-info": "preflight",
    "submit": "server", "watch": "server", "queue": "server", "cancel": "server", "run": "server",
    "resume": "server",
    "continue": "continuing",
    "runs": "records", "sheet": "records",
    "sweep": "sweep", "compare": "sweep",
}


class LorawfGroup(click.Group):
    """A click group that loads a command's module when the command is asked for, and turns every
    :class:`LorawfError` into one line on stderr and its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            for command in importlib.import_module(f"lorawf.cli.{module}").COMMANDS:
                if command.name is not None:
                    self.commands.setdefault(command.name, command)
        return self.commands.get(cmd_name)

    def all_commands(self) -> dict[str, click.Command]:
        """Every command, loaded (for the command reference)."""
        ctx = click.Context(self)
        return {name: command for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None}

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LorawfError as err:
            say(f"error: {err}", err=True)
            sys.exit(exit_code_for(err))
        except KeyboardInterrupt:
            click.echo("cancelled", err=True)
            sys.exit(EXIT_CANCELLED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors (exit 2), --help and --version
        except OSError as err:  # a file given by the user: one line, never a traceback
            where = f"{err.filename}: " if err.filename else ""
            say(f"error: {where}{err.strerror or err}", err=True)
            sys.exit(exit_code_for(err))
        except Exception as err:  # a bug: say so in one line; LORAWF_DEBUG=1 shows the traceback
            if os.environ.get("LORAWF_DEBUG"):
                raise
            say(f"error: internal error ({type(err).__name__}: {err}); "
                "rerun with LORAWF_DEBUG=1 for the traceback and please report it", err=True)
            sys.exit(exit_code_for(err))


@click.group(cls=LorawfGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorawf")
def main() -> None:
    """Plan, patch, submit and watch ComfyUI FluxTrainer LoRA training runs.

    \b
    Exit codes: 0 ok, 1 the job failed (run failed, drift, validation problems), 2 usage,
    3 bad input, 4 server rejected the workflow, 5 server unreachable or protocol failure,
    130 cancelled.
    """


def run() -> NoReturn:
    """The ``lorawf`` console script: :func:`main`, then an exit that skips tearing the interpreter down.

    Once the command has finished and its output is flushed there is nothing left to do, yet the
    interpreter's finalisation (every module, every object) took 20-90 ms after a server command: time a
    user waits at the end of every run (measured in docs/bench.md). ``atexit`` handlers still run.
    """
    import atexit

    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    status = code if isinstance(code, int) else (0 if code is None else 1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`lorawf ... | head`): nothing more can be said
            pass
    atexit._run_exitfuncs()
    os._exit(status)
