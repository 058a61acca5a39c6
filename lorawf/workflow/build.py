"""Glue between files and the pure planner/patcher: read a template, plan, patch, serialize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorawf.comfy.schema import SchemaSet, bundled_schemas
from lorawf.training.families import DEFAULT_FAMILY
from lorawf.training.plan import PlanOverrides, TrainingPlan, plan_training
from lorawf.workflow.io import dumps_workflow, load_workflow
from lorawf.workflow.patch import PatchOptions, PatchResult, patch_workflow, template_family
from lorawf.workflow.templates import bundled_template_path


@dataclass(frozen=True)
class BuiltWorkflow:
    """A planned and patched workflow, ready to write or submit."""

    plan: TrainingPlan
    patch: PatchResult
    template_path: Path

    @property
    def text(self) -> str:
        """The deterministic serialization (same inputs, same bytes)."""
        return dumps_workflow(self.patch.workflow)


def load_template(path: Path | None = None) -> tuple[Path, dict[str, object]]:
    """Read a template (the bundled one by default); a UI-format export is converted to API format."""
    template_path = path or bundled_template_path()
    workflow, _was_ui = load_workflow(template_path, bundled_schemas())
    return template_path, workflow


def build_workflow(
    images: int,
    options: PatchOptions,
    overrides: PlanOverrides | None = None,
    template_path: Path | None = None,
    schemas: SchemaSet | None = None,
    model: str | None = None,
) -> BuiltWorkflow:
    """Plan for ``images`` and patch the template with the plan and ``options``.

    ``model`` (``--model``) picks the bundled template of that family; with a ``template_path`` it must be the
    family the template trains, and None means "whichever it trains" (Flux for the bundled one)."""
    if template_path is None:
        template_path = bundled_template_path(model or DEFAULT_FAMILY)
    path, template = load_template(template_path)
    found = template_family(template)
    plan = plan_training(images, overrides, model=model or (found.name if found else DEFAULT_FAMILY))
    result = patch_workflow(template, plan, options, schemas or bundled_schemas())
    return BuiltWorkflow(plan, result, path)
