"""The command reference (docs/reference/commands.md), generated from the click definitions so it cannot drift.

``python docs/commands_reference.py`` rewrites the page; ``mkdocs build`` does it too (``docs/hooks.py``) and
``tests/test_docs.py`` fails while the committed page differs from what the commands say.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

PAGE = Path(__file__).resolve().parent / "reference" / "commands.md"


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    commands = group.all_commands() if hasattr(group, "all_commands") else group.commands
    for name in sorted(commands):
        command = commands[name]
        if command.hidden:
            continue
        out.append((f"{prefix} {name}", command))
        if isinstance(command, click.Group):
            out += _commands(command, f"{prefix} {name}")
    return out


def _help(command: click.Command) -> str:
    """The command's help as ``--help`` shows it: dedented, click's ``\\b`` markers dropped."""
    text = inspect.cleandoc(command.help or "")
    return "\n".join(line for line in text.splitlines() if line.strip() != "\b").strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(path: str, command: click.Command, parent: click.Context) -> str:
    ctx = click.Context(command, info_name=path.split()[-1], parent=parent)
    usage = command.collect_usage_pieces(ctx)
    lines = [f"## `{path}`", "", "```text", f"{path} {' '.join(usage)}".rstrip(), "```", ""]
    help_text = _help(command)
    if help_text:
        lines += ["```text", help_text, "```", ""]
    rows = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        flags, text = record
        rows.append(f"| `{_cell(flags)}` | {_cell(text)} |")
    if rows:
        lines += ["| option | what it does |", "|---|---|", *rows, ""]
    return "\n".join(lines)


def render() -> str:
    """The whole page, from ``lorawf.cli.main``."""
    from lorawf.cli import main

    root = click.Context(main, info_name="lorawf", **main.context_settings)  # -h as well as --help, as the CLI
    parts = ["# Command reference", "",
             ("Generated from the commands' own definitions (`docs/commands_reference.py`); "
             "`lorawf COMMAND --help` prints the same."), "",
             "```text", _help(main), "```", ""]
    for path, command in _commands(main, "lorawf"):
        parent = root
        if len(path.split()) > 2:  # a subcommand: its group's context first
            group = main.all_commands()[path.split()[1]]
            parent = click.Context(group, info_name=path.split()[1], parent=root)
        parts.append(_section(path, command, parent))
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {PAGE}\n")
