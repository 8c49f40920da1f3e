"""The divergence rule as a table of (curve, expected decision), as Optuna tests its pruners,
and the Tune Stopper that applies it to reported results."""

from __future__ import annotations

import math
import pickle

import pytest

from gpt4all_ray.divergence import DivergencePolicy
from gpt4all_ray.evaluation import StopReason
from gpt4all_ray.search.stopping import DivergenceStopper

DIVERGED, NON_FINITE = StopReason.DIVERGED, StopReason.NON_FINITE

nan, inf = math.nan, math.inf
QUARTERS = [0.25 * i for i in range(1, 13)]  # four step-level evaluations an epoch, 3 epochs

CASES = {
    # name: (losses, epochs or None (= 1, 2, ...), policy kwargs, (stop, reason, at, best_at))
    "single evaluation": ([3.0], None, {}, (False, "", 1, 1)),
    "monotone decrease": ([3.0, 2.5, 2.4, 2.3, 2.25], None, {}, (False, "", 5, 5)),
    "plateau: equal is not a rise": ([3.0, 2.0, 2.0, 2.0], None, {}, (False, "", 4, 2)),
    "GPT4All-J full: rose in epoch 2, keep epoch 1": ([3.0, 3.1], None, {}, (True, DIVERGED, 2, 1)),
    "rise after a fall": ([3.0, 2.0, 2.5], None, {}, (True, DIVERGED, 3, 2)),
    "rise inside the grace period": ([3.0, 3.1], None, {"grace_epochs": 2}, (False, "", 2, 1)),
    "rise inside, then past the grace period": ([3.0, 3.1, 3.2], None, {"grace_epochs": 2}, (True, DIVERGED, 3, 1)),
    "noise within min_delta": ([2.0, 2.01, 1.995, 2.012], None, {"min_delta": 0.01}, (False, "", 4, 3)),
    "rise beyond min_delta": ([2.0, 2.03], None, {"min_delta": 0.01}, (True, DIVERGED, 2, 1)),
    "spike then recovery, patience 2": ([3.0, 3.1, 2.9], None, {"patience": 2}, (False, "", 3, 3)),
    "two rises in a row, patience 2": ([3.0, 3.1, 3.05], None, {"patience": 2}, (True, DIVERGED, 3, 1)),
    "rises not in a row, patience 2": ([3.0, 3.1, 3.0, 3.2], None, {"patience": 2}, (False, "", 4, 1)),
    "NaN first, even inside the grace period": ([nan], None, {}, (True, NON_FINITE, 1, 0)),
    "inf mid-run, grace 5": ([3.0, inf], None, {"grace_epochs": 5}, (True, NON_FINITE, 2, 1)),
    "NaN after a best": ([3.0, 2.0, nan, 1.0], None, {}, (True, NON_FINITE, 3, 2)),
    "step-level: one noisy evaluation stops an unsmoothed policy": (
        [3.0, 2.8, 2.6, 2.5, 2.45, 2.6, 2.4, 2.35],
        QUARTERS[:8],
        {},
        (True, DIVERGED, 6, 5),
    ),
    "step-level: smoothing rides over the same noise": (
        [3.0, 2.8, 2.6, 2.5, 2.45, 2.6, 2.4, 2.35],
        QUARTERS[:8],
        {"smoothing": 0.8},
        (False, "", 8, 8),
    ),
    "step-level: a sustained rise still stops a smoothed policy": (
        [3.0, 2.8, 2.6, 2.5, 2.45, 2.7, 2.9, 3.1, 3.3],
        QUARTERS[:9],
        {"smoothing": 0.8},
        (True, DIVERGED, 7, 5),
    ),
    "step-level: rises before the grace epoch ends do not count": (
        [3.0, 3.2, 3.4, 3.6, 2.9],
        QUARTERS[:5],
        {},
        (False, "", 5, 5),
    ),
}


@pytest.mark.parametrize(("losses", "epochs", "kwargs", "expected"), CASES.values(), ids=list(CASES))
def test_decision_table(losses: list[float], epochs: list[float] | None, kwargs: dict, expected: tuple) -> None:
    d = DivergencePolicy(**kwargs).decide(losses, epochs)
    assert (d.stop, d.reason, d.at, d.best_at) == expected
    assert d.at_epoch == (epochs[d.at - 1] if epochs else d.at)  # every stop says when it happened


def test_best_is_the_minimum_so_far_of_the_raw_losses() -> None:
    assert DivergencePolicy().decide([3.0, 2.0, 2.5]).best == 2.0
    assert DivergencePolicy(smoothing=0.9).decide([3.0, 2.0, 2.5]).best == 2.0


@pytest.mark.parametrize(
    "kwargs", [{"grace_epochs": -1}, {"min_delta": -0.1}, {"patience": 0}, {"smoothing": 1.0}, {"smoothing": -0.1}]
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DivergencePolicy(**kwargs)


def test_empty_or_mismatched_history_is_an_error() -> None:
    with pytest.raises(ValueError):
        DivergencePolicy().decide([])
    with pytest.raises(ValueError, match="2 losses but 1 epochs"):
        DivergencePolicy().decide([3.0, 2.0], [1.0])


def test_policy_pickles() -> None:
    policy = DivergencePolicy(grace_epochs=2, min_delta=0.01, patience=3, smoothing=0.5)
    assert pickle.loads(pickle.dumps(policy)) == policy


def result(step: int, loss: float, per_epoch: int = 10) -> dict:
    """A worker's report as Tune hands it to a stopper (the fields a stopper does not read kept simple)."""
    epoch = -(-step // per_epoch)
    return {"step": step, "epoch": epoch, "epoch_progress": step / per_epoch, "val_loss": loss} | {
        "best_val_loss": loss,
        "best_epoch": epoch,
    }


def test_stopper_judges_each_trial_on_its_own_history_and_pickles_midway() -> None:
    stopper = DivergenceStopper(DivergencePolicy())
    assert stopper("a", result(10, 3.0)) is False
    assert stopper("b", result(10, 3.0)) is False
    assert stopper("b", result(20, 2.5)) is False
    restored = pickle.loads(pickle.dumps(stopper))  # Tune saves it with the experiment state
    assert restored("a", result(20, 3.2)) is True  # a rose in epoch 2
    assert restored("b", result(30, 2.4)) is False  # b kept improving
    assert restored.decisions["a"].reason == DIVERGED and restored.decisions["a"].at_epoch == 2.0
    assert stopper.stop_all() is False


def test_stopper_ignores_results_without_a_validation_loss_and_repeats() -> None:
    stopper = DivergenceStopper(DivergencePolicy())
    assert stopper("a", {"step": 3, "train_loss": 9.0}) is False
    assert stopper("a", result(10, 3.0)) is False
    assert stopper("a", result(10, 3.0)) is False  # the same evaluation again (a restored trial)
    assert stopper.history["a"] == [(1.0, 3.0)]


def test_gpu_hour_budget_ends_the_search_when_spent_and_pickles() -> None:
    from gpt4all_ray.search.stopping import GpuHourBudget

    budget = GpuHourBudget(hours=2.0, gpus_per_trial=8)  # 8 GPUs a trial: 15 minutes of trials
    assert budget("a", {"time_total_s": 400.0}) is False and budget.stop_all() is False
    budget = pickle.loads(pickle.dumps(budget))
    budget("b", {"time_total_s": 300.0})
    assert budget.stop_all() is False  # 700 s x 8 GPUs = 1.56 GPU-hours
    budget("a", {"time_total_s": 600.0})  # a trial's time is its latest total, not a sum of reports
    assert budget.used_hours() == pytest.approx(900 * 8 / 3600) and budget.stop_all() is True
