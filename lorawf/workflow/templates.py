"""Where the bundled workflow template lives (inside the wheel, or in the source checkout)."""

from __future__ import annotations

from pathlib import Path

TEMPLATE_NAME = "lora_training_workflow_headless.json"


def bundled_template_path() -> Path:
    """Path of ``workflows/lora_training_workflow_headless.json`` as installed or in the checkout."""
    installed = Path(__file__).parent.parent / "data" / "workflows" / TEMPLATE_NAME
    if installed.is_file():
        return installed
    return Path(__file__).resolve().parent.parent.parent / "workflows" / TEMPLATE_NAME
