"""Learning-rate schedules as pure functions of the optimizer step: a multiplier of the peak LR."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(name: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak over `warmup_steps`, then constant, linear decay or cosine to 0.

    `constant_with_warmup` is GPT4All-J's final schedule.
    """
    decay_steps = max(1, total_steps - warmup_steps)

    def after_warmup(step: int) -> float:
        done = min(1.0, (step - warmup_steps) / decay_steps)
        if name == "constant_with_warmup":
            return 1.0
        if name == "linear":
            return 1.0 - done
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        raise ValueError(f"unknown lr_schedule {name!r}")

    after_warmup(warmup_steps)  # fail on a bad name now, not at the first post-warmup step

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return after_warmup(step)

    return multiplier
