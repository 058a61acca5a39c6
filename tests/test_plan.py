"""The planner reproduces the seed table and its boundaries exactly, and checks every override."""

from __future__ import annotations

import math

import pytest

from lorawf.comfy.schema import bundled_schemas
from lorawf.errors import DatasetError, OverrideError
from lorawf.training.plan import LIMITS, PlanOverrides, checkpoint_interval_for, format_plan, plan_training


@pytest.mark.parametrize(
    ("images", "steps", "interval"),
    [(15, 600, 100), (30, 1200, 250), (43, 1720, 250), (60, 2400, 500), (100, 3500, 500)],
)
def test_seed_table(images: int, steps: int, interval: int) -> None:
    plan = plan_training(images)
    assert (plan.max_train_steps, plan.checkpoint_interval) == (steps, interval)
    assert plan.num_repeats == 1
    assert plan.learning_rate == 1e-4
    assert (plan.network_dim, plan.network_alpha, plan.batch_size) == (16, 16.0, 2)
    assert (plan.lr_scheduler, plan.optimizer, plan.gradient_dtype) == ("cosine_with_restarts", "adamw8bit", "bf16")


def test_100_images_is_clamped_to_35_steps_per_image() -> None:
    plan = plan_training(100)
    assert plan.clamped == "max"
    assert plan.steps_per_image == 35
    assert any(a.code == "steps_clamped" for a in plan.advice)


def test_43_images_schedule_steps_per_image_and_passes() -> None:
    plan = plan_training(43)
    assert plan.checkpoint_steps == (250, 500, 750, 1000, 1250, 1500, 1720)
    assert plan.loop_steps == (250, 250, 250, 250, 250, 250, 220)
    assert sum(plan.loop_steps) == plan.max_train_steps
    assert plan.steps_per_image == 40
    assert plan.passes == pytest.approx(1720 * 2 / 43)


@pytest.mark.parametrize(
    ("images", "steps", "interval", "codes"),
    [
        (1, 500, 100, {"dataset_too_small", "steps_clamped"}),
        (7, 500, 100, {"dataset_too_small", "steps_clamped"}),
        (8, 500, 100, {"dataset_small", "steps_clamped"}),
        (12, 500, 100, {"dataset_small", "steps_clamped"}),
        (13, 520, 100, {"dataset_small"}),
        (24, 960, 100, {"dataset_below_sweet_spot"}),
        (25, 1000, 250, {"dataset_sweet_spot"}),
        (49, 1960, 250, {"dataset_sweet_spot"}),
        (50, 2000, 500, {"dataset_sweet_spot"}),
        (60, 2400, 500, {"style_dilution"}),
        (61, 2440, 500, {"style_dilution"}),
        (87, 3480, 500, {"style_dilution"}),
        (88, 3500, 500, {"style_dilution", "steps_clamped"}),
        (250, 3500, 500, {"style_dilution", "steps_clamped"}),
    ],
)
def test_boundaries(images: int, steps: int, interval: int, codes: set[str]) -> None:
    plan = plan_training(images)
    assert plan.max_train_steps == steps
    assert plan.checkpoint_interval == interval
    assert {a.code for a in plan.advice} == codes
    assert plan.checkpoint_steps[-1] == steps
    assert all(s % interval == 0 for s in plan.checkpoint_steps[:-1])


def test_fewer_than_8_is_a_strong_warning_and_60_plus_suggests_curating() -> None:
    assert plan_training(7).advice[0].severity == "strong"
    dilution = plan_training(60).advice[0]
    assert dilution.severity == "warning" and "30-50" in dilution.message


@pytest.mark.parametrize(("total", "interval"), [(999, 100), (1000, 250), (1999, 250), (2000, 500)])
def test_interval_thresholds(total: int, interval: int) -> None:
    assert checkpoint_interval_for(total) == interval
    assert plan_training(43, PlanOverrides(max_train_steps=total)).checkpoint_interval == interval


def test_zero_images_is_an_error() -> None:
    with pytest.raises(DatasetError, match="0 training images"):
        plan_training(0)


def test_overrides_are_applied() -> None:
    plan = plan_training(43, PlanOverrides(network_dim=32, learning_rate=5e-5, batch_size=1, checkpoint_interval=200))
    assert (plan.network_dim, plan.network_alpha) == (32, 32.0)  # alpha follows dim unless set
    assert plan.learning_rate == 5e-5
    assert plan.checkpoint_steps[-2:] == (1600, 1720)
    assert plan.passes == pytest.approx(1720 / 43)
    assert plan_training(43, PlanOverrides(network_alpha=8)).network_alpha == 8.0
    assert plan_training(43, PlanOverrides(steps_per_image=50)).max_train_steps == 2150
    assert plan_training(43, PlanOverrides(max_train_steps=12345)).max_train_steps == 12345


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (PlanOverrides(network_dim=0), "--dim 0 is out of range"),
        (PlanOverrides(network_dim=100001), "out of range"),
        (PlanOverrides(network_alpha=-1), "--alpha -1 is out of range"),
        (PlanOverrides(network_alpha=4096), "out of range"),
        (PlanOverrides(learning_rate=0), "greater than 0"),
        (PlanOverrides(learning_rate=-1e-4), "out of range"),
        (PlanOverrides(learning_rate=11), "out of range"),
        (PlanOverrides(learning_rate=math.nan), "finite"),
        (PlanOverrides(max_train_steps=0), "out of range"),
        (PlanOverrides(max_train_steps=100001), "out of range"),
        (PlanOverrides(steps_per_image=0), "greater than 0"),
        (PlanOverrides(steps_per_image=40, max_train_steps=1000), "only one"),
        (PlanOverrides(checkpoint_interval=0), "out of range"),
        (PlanOverrides(checkpoint_interval=10001), "out of range"),
        (PlanOverrides(checkpoint_interval=5), "at most 200"),
        (PlanOverrides(batch_size=0), "out of range"),
        (PlanOverrides(num_repeats=0), "out of range"),
        (PlanOverrides(network_dim=1.5), "whole number"),  # type: ignore[arg-type]
    ],
)
def test_bad_overrides(overrides: PlanOverrides, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        plan_training(43, overrides)


def test_limits_match_the_fluxtrainer_schemas() -> None:
    schemas = bundled_schemas()
    init = schemas["InitFluxLoRATraining"].inputs
    add = schemas["TrainDatasetAdd"].inputs
    loop = schemas["FluxTrainLoop"].inputs
    for name, spec in [("network_dim", init["network_dim"]), ("network_alpha", init["network_alpha"]),
                       ("learning_rate", init["learning_rate"]), ("max_train_steps", init["max_train_steps"]),
                       ("checkpoint_interval", loop["steps"]), ("batch_size", add["batch_size"]),
                       ("num_repeats", add["num_repeats"])]:
        assert LIMITS[name] == (spec.minimum, spec.maximum), name


def test_format_plan_shows_everything_a_user_needs() -> None:
    text = format_plan(plan_training(43))
    for expected in ("1720", "40.0", "80.0", "cosine_with_restarts", "adamw8bit", "bf16", "16 / 16",
                     "250, 500, 750, 1000, 1250, 1500, 1720", "sweet spot"):
        assert expected in text
