"""Commands that judge or convert workflows: ``validate``, ``convert``, ``object-info``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
