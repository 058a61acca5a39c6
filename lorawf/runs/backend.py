"""Which trainer runs a ``lorawf run``: the one asked for, or (``--trainer auto``) the one the server can run.

FluxTrainer where the server has its nodes for the run's model family; ComfyUI's own training nodes where it
has those instead (saying so, because the two train differently: docs/guides/models.md); FluxTrainer otherwise,
whose preflight then names the missing nodes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lorawf.comfy.events import Notice
from lorawf.net.settings import ServerSettings
from lorawf.runs.engine import FollowOptions, Reporter
from lorawf.training.families import FAMILIES, FLUXTRAINER, NATIVE

if TYPE_CHECKING:
    from lorawf.comfy.schema import SchemaSet
    from lorawf.runs.pipeline import RunRequest

AUTO = "auto"
#: FluxTrainer's nodes every family's exact chain uses besides its own Init (workflow/patch.py).
FLUXTRAINER_CHAIN = ("FluxTrainLoop", "FluxTrainSave", "FluxTrainEnd")


def pick_trainer(schemas: SchemaSet, model: str) -> tuple[str, str | None]:
    """``(trainer, why)`` for a server with ``schemas``; ``why`` is said when it is not FluxTrainer."""
    from lorawf.runs.native import TRAINING_NODES

    needed = (FAMILIES[model].init_class, *FLUXTRAINER_CHAIN)
    missing = [n for n in needed if n not in schemas]
    if not missing:
        return FLUXTRAINER, None
    if all(n in schemas for n in TRAINING_NODES):
        return NATIVE, (f"--trainer auto: the server has no FluxTrainer {', '.join(missing)}; training with "
                        "ComfyUI's own nodes (as --trainer native: AdamW at a constant rate, alpha 1, one prompt "
                        "per checkpoint); pass --trainer fluxtrainer to insist")
    return FLUXTRAINER, None


async def run(settings: ServerSettings, request: RunRequest, reporter: Reporter,
              options: FollowOptions | None = None) -> Path:
    """``lorawf run`` with the trainer of ``request`` (``auto`` decided here, from the server's schemas)."""
    from lorawf.runs import pipeline
    from lorawf.runs.native import run_native

    trainer = request.trainer
    if trainer == AUTO:
        pipeline.check_request(request)  # a request wrong on its own is said before the server is asked
        from lorawf.net.http import ComfyClient
        from lorawf.net.schema_cache import load_server_schemas
        from lorawf.workflow.build import load_template
        from lorawf.workflow.patch import template_family

        model = request.model
        if model is None and request.template is not None:
            found = template_family(load_template(request.template)[1])
            model = found.name if found else None
        from lorawf.runs.engine import ending_with_done

        # an unreachable server or Ctrl-C here still ends the event stream with `done`
        async with ending_with_done(reporter, settings), ComfyClient(settings) as client:
            schemas = await load_server_schemas(client)
        trainer, why = pick_trainer(schemas, model or "flux")
        if why is not None and request.template is None:
            reporter(Notice(None, why, warning=True))
        elif why is not None:  # a template is FluxTrainer's: say what is missing instead of switching
            trainer = FLUXTRAINER
        request = replace(request, trainer=trainer)
    if trainer == NATIVE:
        return await run_native(settings, request, reporter, options)
    return await pipeline.run(settings, request, reporter, options)
