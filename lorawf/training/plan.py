"""The planner: training hyperparameters from the dataset size. Pure: no I/O, no imports beyond stdlib.

Why these numbers: style LoRAs came out weak because runs were under-trained (43 images x 10 repeats with
1720 steps is 4 steps per image). A style needs 30-60 optimizer steps per image, so lorawf plans 40 steps per
image with one repeat, clamped to 500..3500 steps, and checkpoints often enough to pick the best one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lorawf.errors import DatasetError, OverrideError
from lorawf.training import native
from lorawf.training.families import DEFAULT_FAMILY, DEFAULT_TRAINER, NATIVE, TRAINERS, family
from lorawf.training.overrides import OVERRIDE_NAMES, override_flag

STEPS_PER_IMAGE = 40
MIN_STEPS = 500
MAX_STEPS = 3500
LEARNING_RATE = 1e-4
NETWORK_DIM = 16
BATCH_SIZE = 2
NUM_REPEATS = 1
LR_SCHEDULER = "cosine_with_restarts"
OPTIMIZER = "adamw8bit"
GRADIENT_DTYPE = "bf16"
SWEET_SPOT = (25, 60)
MAX_CHECKPOINTS = 200  # a longer Loop -> Save -> Validate chain is a mistake, not a plan

# Ranges the FluxTrainer nodes accept (InitFluxLoRATraining, TrainDatasetAdd, FluxTrainLoop at 639b3e8).
# tests/test_plan.py checks these against the bundled object_info so they cannot drift.
LIMITS: dict[str, tuple[float, float | None]] = {
    "network_dim": (1, 100000),  # InitFluxLoRATraining.network_dim
    "network_alpha": (0.0, 2048.0),  # InitFluxLoRATraining.network_alpha
    "learning_rate": (0.0, 10.0),  # InitFluxLoRATraining.learning_rate (0 is accepted there, not here)
    "max_train_steps": (1, 100000),  # InitFluxLoRATraining.max_train_steps
    "checkpoint_interval": (1, 10000),  # FluxTrainLoop.steps: one chain block trains at most this many
    "batch_size": (1, None),  # TrainDatasetAdd.batch_size
    "num_repeats": (1, None),  # TrainDatasetAdd.num_repeats
}


@dataclass(frozen=True)
class Advice:
    """A piece of dataset guidance: ``severity`` is ``info``, ``warning`` or ``strong``."""

    code: str
    severity: str
    message: str


@dataclass(frozen=True)
class PlanOverrides:
    """User overrides of the planned values; ``None`` means 'plan it'."""

    network_dim: int | None = None
    network_alpha: float | None = None
    learning_rate: float | None = None
    max_train_steps: int | None = None
    steps_per_image: float | None = None
    checkpoint_interval: int | None = None
    batch_size: int | None = None
    num_repeats: int | None = None


def overrides_from_names(values: Mapping[str, Any]) -> PlanOverrides:
    """:class:`PlanOverrides` from short names (``dim``, ``lr``...); names not listed are ignored."""
    return PlanOverrides(**{o.field: values.get(o.name) for o in OVERRIDE_NAMES})


@dataclass(frozen=True)
class TrainingPlan:
    """Everything lorawf decided for one run, and why."""

    images: int
    num_repeats: int
    max_train_steps: int
    steps_per_image: float
    passes: float
    learning_rate: float
    network_dim: int
    network_alpha: float
    batch_size: int
    lr_scheduler: str
    optimizer: str
    gradient_dtype: str
    checkpoint_interval: int
    checkpoint_steps: tuple[int, ...]
    clamped: str | None = None  # "min" or "max" when the step count hit a bound
    advice: tuple[Advice, ...] = field(default_factory=tuple)
    model: str = DEFAULT_FAMILY  # the base-model family (training/families.py)
    trainer: str = DEFAULT_TRAINER  # "fluxtrainer" (the node pack) or "native" (ComfyUI's TrainLoraNode)

    @property
    def loop_steps(self) -> tuple[int, ...]:
        """The ``steps`` of each FluxTrainLoop block: they add up to ``max_train_steps`` exactly."""
        previous = 0
        out = []
        for step in self.checkpoint_steps:
            out.append(step - previous)
            previous = step
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``lorawf plan --json`` and run records)."""
        data = asdict(self)
        data["checkpoint_steps"] = list(self.checkpoint_steps)
        data["loop_steps"] = list(self.loop_steps)
        data["advice"] = [asdict(a) for a in self.advice]
        return data


def checkpoint_interval_for(total_steps: int) -> int:
    """Every 500 steps from 2000 total, every 250 from 1000, every 100 below 1000."""
    if total_steps >= 2000:
        return 500
    if total_steps >= 1000:
        return 250
    return 100


def checkpoint_schedule(total_steps: int, interval: int) -> tuple[int, ...]:
    """Steps at which a checkpoint is written: every multiple of ``interval`` below the total, and the total."""
    steps = list(range(interval, total_steps, interval))
    steps.append(total_steps)
    return tuple(steps)


def dataset_advice(images: int) -> tuple[Advice, ...]:
    """Guidance on the dataset size, with the reason."""
    lo, hi = SWEET_SPOT
    if images < 8:
        return (
            Advice(
                "dataset_too_small",
                "strong",
                f"only {images} image(s): a style LoRA from fewer than 8 images usually memorises them "
                f"instead of learning the style; gather {lo}-{hi} consistent images",
            ),
        )
    if images <= 15:
        return (
            Advice(
                "dataset_small",
                "warning",
                f"{images} images is small (8-15): it works only if every image is very on-style and high "
                f"quality; {lo}-{hi} is the sweet spot",
            ),
        )
    if images < lo:
        return (
            Advice(
                "dataset_below_sweet_spot",
                "info",
                f"{images} images is below the {lo}-{hi} sweet spot: fine if the images are consistent",
            ),
        )
    if images < hi:
        return (Advice("dataset_sweet_spot", "info", f"{images} images is in the {lo}-{hi} sweet spot"),)
    far = " (far beyond 170, curation matters more than quantity)" if images > 170 else ""
    return (
        Advice(
            "style_dilution",
            "warning",
            f"{images} images risks style dilution{far}: a large set tends to average out the style; "
            "consider curating to the 30-50 most characteristic images",
        ),
    )


#: How an error names a planning field: the CLI's flag by default (``network_dim`` -> ``--dim``); a presets
#: file passes :func:`~lorawf.training.overrides.override_key` so its errors name the key it wrote.
Label = Callable[[str], str]


def _check(name: str, value: object, *, integer: bool, label: Label) -> None:
    if value is None:
        return
    flag = label(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OverrideError(f"{flag} {value!r}: expected a number")
    if integer and not float(value).is_integer():
        raise OverrideError(f"{flag} {value!r}: expected a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise OverrideError(f"{flag} {value!r}: expected a finite number")
    lo, hi = LIMITS[name]
    if value < lo or (hi is not None and value > hi):
        allowed = f"{lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
        raise OverrideError(f"{flag} {value:g} is out of range: FluxTrainer accepts {allowed}")


def validate_overrides(o: PlanOverrides, *, label: Label = override_flag) -> None:
    """Check overrides against the ranges the FluxTrainer nodes accept and against sense.

    ``label`` names a field in the messages (the command-line flag unless a presets file says otherwise).
    """
    for name in ("network_dim", "max_train_steps", "checkpoint_interval", "batch_size", "num_repeats"):
        _check(name, getattr(o, name), integer=True, label=label)
    for name in ("network_alpha", "learning_rate"):
        _check(name, getattr(o, name), integer=False, label=label)
    if o.learning_rate is not None and o.learning_rate <= 0:
        raise OverrideError(f"{label('learning_rate')} {o.learning_rate:g}: the learning rate must be greater "
                            "than 0 (try 1e-4)")
    if o.steps_per_image is not None:
        per_image = label("steps_per_image")
        if isinstance(o.steps_per_image, bool) or not isinstance(o.steps_per_image, (int, float)):
            raise OverrideError(f"{per_image} {o.steps_per_image!r}: expected a number (try 40)")
        if not math.isfinite(o.steps_per_image) or o.steps_per_image <= 0:
            raise OverrideError(f"{per_image} {o.steps_per_image:g}: must be greater than 0 (try 40)")
        most = LIMITS["max_train_steps"][1]
        assert most is not None
        if o.steps_per_image > most:  # one image already needs more steps than FluxTrainer accepts
            raise OverrideError(f"{per_image} {o.steps_per_image:g} is out of range: at most {most:g} "
                                f"(the planner caps the total at {MAX_STEPS} anyway; try 40)")
        if o.max_train_steps is not None:
            raise OverrideError(f"{label('max_train_steps')} and {per_image} both set the step count: "
                                "give only one")


def validate_native_overrides(o: PlanOverrides, *, label: Label = override_flag) -> None:
    """What ComfyUI's TrainLoraNode cannot do that FluxTrainer can (training/native.py)."""
    if o.network_alpha is not None:
        raise OverrideError(f"{label('network_alpha')}: the native trainer has no alpha (TrainLoraNode creates a "
                            f"LoRA with alpha {native.ALPHA:g}); drop it, or use --trainer fluxtrainer")
    if o.num_repeats not in (None, 1):
        raise OverrideError(f"{label('num_repeats')} {o.num_repeats}: the native trainer draws every batch from the "
                            "whole set, so repeats change nothing; drop it (or raise --steps)")
    for name, (lo, hi) in native.LIMITS.items():
        value = getattr(o, name)
        if value is not None and not lo <= value <= hi:
            raise OverrideError(f"{label(name)} {value:g} is out of range: ComfyUI's TrainLoraNode accepts "
                                f"{lo:g}..{hi:g}")


def plan_training(images: int, overrides: PlanOverrides | None = None, *, label: Label = override_flag,
                  model: str = DEFAULT_FAMILY, trainer: str = DEFAULT_TRAINER) -> TrainingPlan:
    """Plan a style-LoRA run for ``images`` training images (times ``num_repeats``) of base-model family ``model``
    with ``trainer``; ``label`` as in :func:`validate_overrides`. The rules are the same for every family and
    trainer; only what a trainer cannot do differs (training/native.py)."""
    o = overrides or PlanOverrides()
    try:
        family(model)
    except ValueError as exc:
        raise OverrideError(f"--model {model!r}: {exc}") from None
    if trainer not in TRAINERS:
        raise OverrideError(f"--trainer {trainer!r}: choose one of {', '.join(TRAINERS)}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise DatasetError(f"image count {images!r}: expected a whole number >= 0")
    if images == 0:
        raise DatasetError("the dataset has 0 training images: nothing to train on (add .png/.jpg/.webp images)")
    validate_overrides(o, label=label)
    if trainer == NATIVE:
        validate_native_overrides(o, label=label)

    repeats = o.num_repeats or NUM_REPEATS
    batch = o.batch_size or BATCH_SIZE
    clamped: str | None = None
    if o.max_train_steps is not None:
        total = o.max_train_steps
    else:
        per_image = o.steps_per_image if o.steps_per_image is not None else STEPS_PER_IMAGE
        raw = math.ceil(images * per_image)
        total = min(max(raw, MIN_STEPS), MAX_STEPS)
        if total != raw:
            clamped = "min" if raw < MIN_STEPS else "max"
    interval = o.checkpoint_interval or checkpoint_interval_for(total)
    schedule = checkpoint_schedule(total, interval)
    if len(schedule) > MAX_CHECKPOINTS:
        raise OverrideError(
            f"{label('checkpoint_interval')} {interval} with {total} steps would write {len(schedule)} checkpoints "
            f"(at most {MAX_CHECKPOINTS}): choose an interval of at least {math.ceil(total / MAX_CHECKPOINTS)}"
        )
    dim = o.network_dim or NETWORK_DIM
    alpha = float(o.network_alpha) if o.network_alpha is not None else float(dim)
    if trainer == NATIVE:
        alpha = native.ALPHA

    advice = list(dataset_advice(images))
    if clamped == "max":
        advice.append(
            Advice(
                "steps_clamped",
                "info",
                f"steps capped at {MAX_STEPS}: {total / images:.0f} steps per image instead of {STEPS_PER_IMAGE}",
            )
        )
    elif clamped == "min":
        advice.append(
            Advice("steps_clamped", "info", f"steps raised to the minimum of {MIN_STEPS} "
                   f"({total / images:.0f} steps per image)")
        )
    return TrainingPlan(
        images=images,
        num_repeats=repeats,
        max_train_steps=total,
        steps_per_image=total / images,
        passes=total * batch / (images * repeats),
        learning_rate=float(o.learning_rate) if o.learning_rate is not None else LEARNING_RATE,
        network_dim=dim,
        network_alpha=alpha,
        batch_size=batch,
        lr_scheduler=native.LR_SCHEDULER if trainer == NATIVE else LR_SCHEDULER,
        optimizer=native.OPTIMIZER if trainer == NATIVE else OPTIMIZER,
        gradient_dtype=native.TRAINING_DTYPE if trainer == NATIVE else GRADIENT_DTYPE,
        checkpoint_interval=interval,
        checkpoint_steps=schedule,
        clamped=clamped,
        advice=tuple(advice),
        model=model,
        trainer=trainer,
    )


def format_plan(plan: TrainingPlan) -> str:
    """The readable table that ``lorawf plan`` prints."""
    sched = plan.checkpoint_steps
    shown = ", ".join(str(s) for s in sched) if len(sched) <= 12 else (
        ", ".join(str(s) for s in sched[:4]) + ", ..., " + ", ".join(str(s) for s in sched[-3:])
    )
    clamp_note = {"max": f" (capped at {MAX_STEPS})", "min": f" (raised to {MIN_STEPS})"}.get(plan.clamped or "", "")
    rows = [
        ("images", f"{plan.images}"),
        ("max_train_steps", f"{plan.max_train_steps}{clamp_note}"),
        ("steps per image", f"{plan.steps_per_image:.1f}"),
        ("passes over data", f"{plan.passes:.1f} (steps x batch / (images x repeats))"),
        ("num_repeats", f"{plan.num_repeats}"),
        ("learning_rate", f"{plan.learning_rate:g}"),
        ("network dim/alpha", f"{plan.network_dim} / {plan.network_alpha:g}"),
        ("batch_size", f"{plan.batch_size}"),
        ("lr_scheduler", plan.lr_scheduler),
        ("optimizer", plan.optimizer),
        ("gradient_dtype", plan.gradient_dtype),
        ("checkpoint every", f"{plan.checkpoint_interval} steps ({len(sched)} checkpoints)"),
        ("checkpoints at", shown),
    ]
    rows[:0] = model_rows(plan)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.extend(f"note: {text}" for text in trainer_notes(plan))
    for a in plan.advice:
        label = {"strong": "WARNING", "warning": "warning", "info": "note"}[a.severity]
        lines.append(f"{label}: {a.message}")
    return "\n".join(lines)


def model_rows(plan: TrainingPlan) -> list[tuple[str, str]]:
    """The first rows of ``lorawf plan``: which family and trainer, and what that means for this run."""
    fam = family(plan.model)
    last, first = plan.checkpoint_steps[-1], plan.checkpoint_steps[0]
    if plan.trainer == NATIVE:
        # SaveLoRANode: <prefix>_<steps>_steps_<counter>_.safetensors (comfy_extras/nodes_train.py)
        return [
            ("model", f"{fam.title}"),
            ("trainer", f"ComfyUI native (TrainLoraNode), one prompt per checkpoint ({len(plan.checkpoint_steps)})"),
            ("resolution", "1024 x 1024, every image stretched to it (the native loader has no buckets)"),
            ("files", (f"<name>_{first}_steps_<n>_.safetensors ... <name>_{last}_steps_<n>_.safetensors, "
                      "a loss graph per checkpoint")),
        ]
    return [
        ("model", f"{fam.title} ({fam.models_class} -> {fam.init_class})"),
        ("trainer", "FluxTrainer"),
        ("resolution", "1024 buckets (256..1024)"),
        ("validation", f"{fam.template_validation} ({fam.validate_class})"),
        ("files", (f"{fam.file_name('<name>', plan.network_dim, first)} ... "
                  f"{fam.file_name('<name>', plan.network_dim)}")),
    ]


def trainer_notes(plan: TrainingPlan) -> list[str]:
    """What the trainer cannot do that the plan would otherwise do, said once in ``lorawf plan``."""
    if plan.trainer != NATIVE:
        return []
    return [
        (f"TrainLoraNode has no alpha input: the LoRA trains at alpha {native.ALPHA:g} (scale 1/{plan.network_dim}), "
        "not dim/alpha 16/16"),
        "TrainLoraNode has no scheduler or 8-bit optimizer: AdamW at a constant learning rate",
        "ComfyUI 0.3.64 reports no training progress over the websocket: lorawf counts finished checkpoints",
    ]
