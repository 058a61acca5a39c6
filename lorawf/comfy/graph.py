"""ComfyUI's rules for an API-format graph that every layer above needs (links between nodes)."""

from __future__ import annotations

from typing import Any


def is_link(value: Any) -> bool:
    """ComfyUI's rule for a linked input: ``["<source node id>", <output slot>]`` (a str id, a number slot)."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )
