"""The divergence rule as a table of (curve, expected decision), as Optuna tests its pruners."""

from __future__ import annotations

import math
import pickle

import pytest

from gpt4all_ray.divergence import DIVERGED, NON_FINITE, DivergencePolicy

nan, inf = math.nan, math.inf

CASES = [
    # losses, policy kwargs, (stop, reason, at, best_at)
    ([3.0], {}, (False, "", 1, 1)),
    ([3.0, 2.5, 2.4], {}, (False, "", 3, 3)),
    ([3.0, 3.1], {}, (True, DIVERGED, 2, 1)),  # GPT4All-J full: rose in epoch 2, keep epoch 1
    ([3.0, 2.0, 2.5], {}, (True, DIVERGED, 3, 2)),
    ([3.0, 2.0, 2.0], {}, (False, "", 3, 2)),  # equal is not a rise
    ([3.0, 3.1], {"grace_epochs": 2}, (False, "", 2, 1)),
    ([3.0, 3.1, 3.2], {"grace_epochs": 2}, (True, DIVERGED, 3, 1)),
    ([2.0, 2.01], {"min_delta": 0.01}, (False, "", 2, 1)),
    ([2.0, 2.03], {"min_delta": 0.01}, (True, DIVERGED, 2, 1)),
    ([3.0, 3.1, 2.9], {"patience": 2}, (False, "", 3, 3)),
    ([3.0, 3.1, 3.05], {"patience": 2}, (True, DIVERGED, 3, 1)),
    ([nan], {}, (True, NON_FINITE, 1, 0)),  # even inside the grace period
    ([3.0, inf], {"grace_epochs": 5}, (True, NON_FINITE, 2, 1)),
]


@pytest.mark.parametrize(("losses", "kwargs", "expected"), CASES)
def test_decision_table(losses: list[float], kwargs: dict, expected: tuple) -> None:
    d = DivergencePolicy(**kwargs).decide(losses)
    assert (d.stop, d.reason, d.at, d.best_at) == expected


def test_best_is_the_minimum_so_far() -> None:
    d = DivergencePolicy().decide([3.0, 2.0, 2.5])
    assert d.best == 2.0


@pytest.mark.parametrize("kwargs", [{"grace_epochs": 0}, {"min_delta": -0.1}, {"patience": 0}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DivergencePolicy(**kwargs)


def test_empty_history_is_an_error() -> None:
    with pytest.raises(ValueError):
        DivergencePolicy().decide([])


def test_policy_pickles() -> None:
    policy = DivergencePolicy(grace_epochs=2, min_delta=0.01, patience=3)
    assert pickle.loads(pickle.dumps(policy)) == policy
