"""ComfyUI's own LoRA trainer (``TrainLoraNode``, comfy_extras/nodes_train.py at 0.3.64) as the planner sees it.

What differs from FluxTrainer, read from that source and checked against the bundled schema by
tests/test_native_plan.py:

* no LR scheduler and no 8-bit optimizer: ``optimizer`` is one of AdamW, Adam, SGD, RMSprop at a constant rate;
* no alpha input: a new LoRA is created with ``alpha=1.0``, so its scale is 1/rank (FluxTrainer's dim = alpha is 1);
* ``rank`` 1..128, ``learning_rate`` 1e-7..1.0, ``batch_size`` up to 10000, ``steps`` up to 100000;
* every step draws a random batch from the whole set (``torch.randperm``), so repeats change nothing;
* a checkpoint needs a prompt of its own: ``existing_lora`` continues from a file in the loras folder, and the
  trainer adds the steps it finds in that name (``<prefix>_<steps>_steps_<NNNNN>_.safetensors``).
"""

from __future__ import annotations

OPTIMIZER = "AdamW"
LR_SCHEDULER = "constant"
ALPHA = 1.0
TRAINING_DTYPE = "bf16"
LORA_DTYPE = "bf16"
LOSS_FUNCTION = "MSE"
ALGORITHM = "LoRA"

#: TrainLoraNode's ranges (its schema at 0.3.64), where they are narrower than FluxTrainer's.
LIMITS: dict[str, tuple[float, float]] = {
    "network_dim": (1, 128),  # TrainLoraNode.rank
    "learning_rate": (1e-07, 1.0),  # TrainLoraNode.learning_rate
    "max_train_steps": (1, 100000),  # TrainLoraNode.steps (one segment trains at most this many)
    "batch_size": (1, 10000),  # TrainLoraNode.batch_size
}
