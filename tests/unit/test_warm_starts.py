"""Warm starts from GPT4All's training log, mapped into a space, and the sqrt(k) rule."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from gpt4all_ray.config import Distribution, load_spec
from gpt4all_ray.search.spaces import ENQUEUED, start_points
from gpt4all_ray.search.warm_starts import TRAINING_LOG, clip, from_training_log, sqrt_batch_lr

DEFAULT = Path(__file__).resolve().parents[2] / "search_spaces" / "tiny_cpu.yaml"


def wide_space():  # noqa: ANN201
    """The default space with a learning-rate range that holds the log's values."""
    spec = load_spec(DEFAULT)
    search = dict(spec.search) | {"learning_rate": Distribution("loguniform", (1e-6, 1e-2))}
    search["epochs"] = Distribution("int", (1, 4))
    return dataclasses.replace(spec, search=search)


def test_sqrt_k_rule_from_alpaca() -> None:
    assert sqrt_batch_lr(128) == 2e-5
    assert sqrt_batch_lr(512) == pytest.approx(4e-5)  # 4x the batch, 2x the rate
    assert sqrt_batch_lr(32) == pytest.approx(1e-5)


def test_logged_runs_map_into_the_space_with_every_searched_key() -> None:
    spec = wide_space()
    points = from_training_log(spec, train_rows=1835, scale_lr=False)
    assert len(points) == len(TRAINING_LOG)
    for point, run in zip(points, TRAINING_LOG, strict=True):
        assert set(point) == set(spec.search)
        assert point["learning_rate"] == run.values["learning_rate"]  # inside the range: unchanged
        assert point["lr_schedule"] == run.values["lr_schedule"] and point["weight_decay"] == 0.0
        # warmup keeps its share of an epoch: 500 of 1484 steps at batch 256 -> a third of our 114
        their_steps = 400_000 * 0.95 / run.global_batch
        assert point["warmup_steps"] == round(run.values["warmup_steps"] / their_steps * (1835 // 16))


def test_sqrt_k_scaling_of_each_logged_rate_to_our_batch() -> None:
    spec = wide_space()
    scaled = from_training_log(spec, train_rows=1835, scale_lr=True)
    for point, run in zip(scaled, TRAINING_LOG, strict=True):
        want = run.values["learning_rate"] * math.sqrt(spec.fixed.global_batch / run.global_batch)
        assert point["learning_rate"] == pytest.approx(want)


def test_values_outside_the_space_are_clipped_never_proposed() -> None:
    spec = load_spec(DEFAULT)  # learning rate [3e-4, 3e-2]: the log's 2e-5 and 5e-5 are below it
    points = from_training_log(spec, train_rows=1835, scale_lr=False)
    assert {p["learning_rate"] for p in points} == {3e-4}
    assert clip(Distribution("choice", ("linear", "cosine")), "constant_with_warmup") == "linear"
    assert clip(Distribution("choice", (8, 16, 64)), 20) == 16
    assert clip(Distribution("int", (2, 4)), 7) == 4


def test_enqueued_points_come_first_and_none_twice() -> None:
    spec = dataclasses.replace(
        wide_space(), tune=dataclasses.replace(load_spec(DEFAULT).tune, warm_start="training_log")
    )
    logged = from_training_log(spec, 1835, False)
    spec = dataclasses.replace(spec, enqueue=(logged[2], {**logged[0], "epochs": 3}))
    starts = start_points(spec, 1835)
    points = [start.params for start in starts]
    assert points[:2] == [logged[2], {**logged[0], "epochs": 3}]
    assert points[2:] == [logged[0], logged[1], logged[3]]
    assert [start.origin for start in starts[:2]] == [ENQUEUED, ENQUEUED]
    assert [start.origin for start in starts[2:]] == [f"training log: {TRAINING_LOG[i].name}" for i in (0, 1, 3)]
