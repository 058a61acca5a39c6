"""lorawf: plan, patch, submit and watch ComfyUI FluxTrainer LoRA training runs.

Kept import-light on purpose: ``lorawf plan`` and ``lorawf --help`` must not pull in httpx or websockets.
"""

__version__ = "0.1.0"
