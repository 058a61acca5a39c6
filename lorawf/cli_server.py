"""Commands that talk to a ComfyUI server: ``submit``, ``watch``, ``queue``, ``cancel``, ``run``, ``runs``, ``sheet``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
