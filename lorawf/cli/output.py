"""Every line the commands print goes through :func:`say`: text from servers and files is data, not terminal codes."""

from __future__ import annotations

import click

from lorawf.printable import printable


def say(text: str, *, err: bool = False) -> None:
    """Print ``text`` (line feeds kept, every other control character escaped) and a newline."""
    click.echo(printable(text, multiline=True), err=err)
