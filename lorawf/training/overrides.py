"""The names of the planning overrides, in one place: command options, presets files and sweep files.

Tiny on purpose: the command line reads it at start-up to build ``--dim``, ``--lr``... without loading the planner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OverrideName:
    """One planning override: its short name (``--dim``, presets, sweeps), the field, its type, what it does."""

    name: str
    field: str
    type: type[int | float]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


#: The one list of planning overrides; every command, presets file and sweep file reads it.
OVERRIDE_NAMES: tuple[OverrideName, ...] = (
    OverrideName("dim", "network_dim", int, "LoRA rank (network_dim); default 16."),
    OverrideName("alpha", "network_alpha", float, "network_alpha; default = dim."),
    OverrideName("lr", "learning_rate", float, "Learning rate; default 1e-4."),
    OverrideName("steps", "max_train_steps", int, "Total steps, replacing images x 40."),
    OverrideName("steps_per_image", "steps_per_image", float,
                 "Steps per image (default 40); the total (images x this) is then clamped to 500..3500."),
    OverrideName("interval", "checkpoint_interval", int, "Checkpoint every N steps."),
    OverrideName("batch", "batch_size", int, "Batch size; default 2."),
    OverrideName("repeats", "num_repeats", int, "num_repeats; default 1."),
)


_BY_FIELD = {o.field: o for o in OVERRIDE_NAMES}


def override_flag(field: str) -> str:
    """The command-line flag of a planning field: ``network_dim`` -> ``--dim`` (what error messages must say)."""
    return _BY_FIELD[field].flag


def override_key(field: str) -> str:
    """The presets/sweeps key of a planning field: ``network_dim`` -> ``dim``."""
    return _BY_FIELD[field].name
