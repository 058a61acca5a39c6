"""Where the bundled workflow templates live (inside the wheel, or in the source checkout): one per family."""

from __future__ import annotations

from pathlib import Path

from lorawf.training.families import DEFAULT_FAMILY, FAMILIES

#: The bundled, titled, exact-chain FluxTrainer template of each model family (``--model``).
TEMPLATE_NAMES: dict[str, str] = {
    "flux": "lora_training_workflow_headless.json",
    "sdxl": "sdxl_lora_training_workflow_headless.json",
    "sd35": "sd35_lora_training_workflow_headless.json",
}
TEMPLATE_NAME = TEMPLATE_NAMES[DEFAULT_FAMILY]
assert set(TEMPLATE_NAMES) == set(FAMILIES)


def bundled_template_path(model: str = DEFAULT_FAMILY) -> Path:
    """Path of the bundled template for ``model`` (``workflows/<name>``), as installed or in the checkout."""
    name = TEMPLATE_NAMES[model]
    installed = Path(__file__).parent.parent / "data" / "workflows" / name
    if installed.is_file():
        return installed
    return Path(__file__).resolve().parent.parent.parent / "workflows" / name
