"""Divergence policy: pure Python, fed validation losses in order, says continue or stop.

GPT4All's full fine-tunes diverged in epoch 2 and the epoch-1 checkpoint was shipped. The rule:
after `grace_epochs`, a loss above the trial's own best (by more than `min_delta`, relative)
for `patience` evaluations in a row stops the trial; NaN or inf stops it at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

COMPLETED = "completed"
DIVERGED = "diverged"
NON_FINITE = "non_finite"


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: str  # "" while running, else DIVERGED or NON_FINITE
    at: int  # 1-based evaluation index the decision was made at
    best: float
    best_at: int


@dataclass(frozen=True)
class DivergencePolicy:
    grace_epochs: int = 1
    min_delta: float = 0.0
    patience: int = 1

    def __post_init__(self) -> None:
        if self.grace_epochs < 1:
            raise ValueError(f"grace_epochs must be >= 1, got {self.grace_epochs}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def decide(self, losses: Sequence[float]) -> Decision:
        """Judge the whole history; the last entry is the newest evaluation."""
        if not losses:
            raise ValueError("decide() needs at least one loss")
        best, best_at, rises = math.inf, 0, 0
        for i, loss in enumerate(losses, start=1):
            if not math.isfinite(loss):
                return Decision(True, NON_FINITE, i, best, best_at)
            if loss < best:
                best, best_at, rises = loss, i, 0
            elif i > self.grace_epochs and loss > best * (1 + self.min_delta):
                rises += 1
                if rises >= self.patience:
                    return Decision(True, DIVERGED, i, best, best_at)
        return Decision(False, "", len(losses), best, best_at)
