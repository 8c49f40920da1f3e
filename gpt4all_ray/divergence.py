"""Divergence policy: pure Python, fed validation losses in order, says continue or stop.

GPT4All's full fine-tunes diverged in epoch 2 and the epoch-1 checkpoint was shipped. The rule:
after `grace_epochs`, a loss above the trial's own best (by more than `min_delta`, relative)
for `patience` evaluations in a row stops the trial; NaN or inf stops it at once. With
step-level evaluations, `smoothing` (an exponential moving average's weight on the past) keeps
one noisy evaluation from stopping a trial.

The same object decides inside the worker loop (every rank sees the same all-reduced losses, so
all stop together) and, through `gpt4all_ray.search.stopping`, as a Ray Tune Stopper. Frozen and free of
Ray and torch, so it pickles with Tune's experiment state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpt4all_ray.evaluation import StopReason


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: StopReason
    """RUNNING, else DIVERGED or NON_FINITE."""
    at: int
    """1-based index of the evaluation the decision was made at."""
    at_epoch: float
    """Epoch progress of that evaluation (1.0 = end of epoch 1, 1.5 = half-way through epoch 2)."""
    best: float
    """Best raw (unsmoothed) loss so far: what the checkpoint kept holds."""
    best_at: int


@dataclass(frozen=True)
class DivergencePolicy:
    grace_epochs: float = 1
    min_delta: float = 0.0
    patience: int = 1
    smoothing: float = 0.0
    stop_on_rise: bool = True
    """False: only NaN or inf stops (a baseline that runs every trial to its end)."""

    def __post_init__(self) -> None:
        if self.grace_epochs < 0:
            raise ValueError(f"grace_epochs must be >= 0, got {self.grace_epochs}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")

    @classmethod
    def for_trial(cls, cfg: Any) -> DivergencePolicy:
        """The policy a trial config (TrialConfig: grace_epochs, min_delta, patience, smoothing,
        stop_on_divergence) sets."""
        return cls(cfg.grace_epochs, cfg.min_delta, cfg.patience, cfg.smoothing, cfg.stop_on_divergence)

    def decide(self, losses: Sequence[float], epochs: Sequence[float] | None = None) -> Decision:
        """Judge the whole history; the last entry is the newest evaluation. `epochs` gives each
        evaluation's epoch progress (completed steps / steps per epoch: 1.0 at the end of epoch 1);
        by default evaluation i is at epoch i. A rise counts only after `grace_epochs`."""
        if not losses:
            raise ValueError("decide() needs at least one loss")
        at_epoch = list(epochs) if epochs is not None else [float(i) for i in range(1, len(losses) + 1)]
        if len(at_epoch) != len(losses):
            raise ValueError(f"{len(losses)} losses but {len(at_epoch)} epochs")
        best = best_smoothed = math.inf
        best_at = rises = 0
        smoothed = None
        for i, (loss, epoch) in enumerate(zip(losses, at_epoch, strict=True), start=1):
            if not math.isfinite(loss):
                return Decision(True, StopReason.NON_FINITE, i, epoch, best, best_at)
            smoothed = loss if smoothed is None else self.smoothing * smoothed + (1 - self.smoothing) * loss
            if loss < best:
                best, best_at = loss, i
            if smoothed < best_smoothed:
                best_smoothed, rises = smoothed, 0
            elif epoch > self.grace_epochs and smoothed > best_smoothed * (1 + self.min_delta):
                rises += 1
                if rises >= self.patience and self.stop_on_rise:
                    return Decision(True, StopReason.DIVERGED, i, epoch, best, best_at)
            else:  # within min_delta of the best, or inside the grace period: the run of rises ends
                rises = 0
        return Decision(False, StopReason.RUNNING, len(losses), at_epoch[-1], best, best_at)
