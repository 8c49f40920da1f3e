"""Warm starts: the configurations GPT4All's training log reports, mapped into a search space, to
be enqueued as the first trials; and the sqrt(k) learning-rate rule the log borrowed from Alpaca.

Mapping: the learning rate is scaled by sqrt(k) for the space's global batch when asked (k = our
batch / the log's batch), warmup keeps its share of an epoch (the log's ~400k rows, 5% held out),
and every value is then clipped into the space's range (or the nearest choice): a warm start
never proposes what the space forbids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gpt4all_ray.config import Distribution, SearchSpec

GPT4ALL_ROWS = 400_000  # "The final dataset is ~400k examples"
ALPACA_BATCH, ALPACA_LR = 128, 2e-5  # the log's reference for sqrt(k) scaling


@dataclass(frozen=True)
class LoggedRun:
    name: str
    global_batch: int
    values: dict[str, Any]


# The log gives no schedule for the LLaMA runs: Hugging Face Trainer's default (linear) is assumed.
TRAINING_LOG = (
    LoggedRun(
        "GPT4All LoRA, LLaMA-7B, 4 epochs",
        32,
        {"learning_rate": 5e-5, "lr_schedule": "linear", "warmup_steps": 100, "weight_decay": 0.0, "epochs": 4},
    ),
    LoggedRun(
        "GPT4All full, LLaMA-7B",
        256,
        {"learning_rate": 5e-5, "lr_schedule": "linear", "warmup_steps": 100, "weight_decay": 0.0, "epochs": 2},
    ),
    LoggedRun(
        "GPT4All-J full, GPT-J-6B (final)",
        256,
        {
            "learning_rate": 2e-5,
            "lr_schedule": "constant_with_warmup",
            "warmup_steps": 500,
            "weight_decay": 0.0,
            "epochs": 2,
        },
    ),
    LoggedRun(
        "GPT4All-J LoRA, GPT-J-6B (final)",
        32,
        {
            "learning_rate": 2e-5,
            "lr_schedule": "constant_with_warmup",
            "warmup_steps": 500,
            "weight_decay": 0.0,
            "epochs": 2,
        },
    ),
)


def sqrt_batch_lr(global_batch: int, reference_batch: int = ALPACA_BATCH, reference_lr: float = ALPACA_LR) -> float:
    """The learning rate for `global_batch`, scaled by sqrt(k) from a reference (Alpaca's)."""
    return reference_lr * math.sqrt(global_batch / reference_batch)


def clip(dist: Distribution, value: Any) -> Any:
    if dist.kind == "choice":
        if value in dist.args:
            return value
        numeric = all(isinstance(v, int | float) for v in (*dist.args, value))
        return min(dist.args, key=lambda c: abs(c - value)) if numeric else dist.args[0]
    low, high = dist.args
    clipped = min(max(value, low), high)
    return int(round(clipped)) if dist.kind == "int" else float(clipped)


def from_training_log(spec: SearchSpec, train_rows: int, scale_lr: bool) -> list[dict[str, Any]]:
    """Each logged run as a point of this space (only the searched keys, all of them)."""
    ours = spec.fixed
    points = []
    for run in TRAINING_LOG:
        values = dict(run.values)
        if scale_lr:
            values["learning_rate"] = sqrt_batch_lr(ours.global_batch, run.global_batch, values["learning_rate"])
        their_steps = GPT4ALL_ROWS * 0.95 / run.global_batch
        our_steps = max(1, train_rows // ours.global_batch)
        values["warmup_ratio"] = values["warmup_steps"] / (their_steps * values["epochs"])
        values["warmup_steps"] = round(values["warmup_steps"] / their_steps * our_steps)
        point = {}
        for key, dist in spec.search.items():
            value = values.get(key, getattr(ours, key))
            point[key] = clip(dist, value)
        points.append(point)
    return points
