"""Commands that read local run records: ``runs``, ``sheet``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
