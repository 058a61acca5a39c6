"""Commands that need no server: ``plan``, ``patch``, ``regen``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
