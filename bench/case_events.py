"""Case placeholder: needs lorawf.client and the test server."""

from __future__ import annotations

from bench.harness import CaseResult, Context, Skip

NAME = "events"
TITLE = "events (server case)"


def run(ctx: Context) -> CaseResult:
    """Not yet written."""
    raise Skip("needs lorawf.client and tests.comfy_server, which have not landed yet")
