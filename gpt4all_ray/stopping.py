"""The divergence policy as a Ray Tune Stopper: composable with other stoppers
(`tune.stopper.CombinedStopper`), saved with the experiment state, judging each trial on the
validation losses it reported (its evaluations, epoch-level or step-level)."""

from __future__ import annotations

from typing import Any

from ray.tune import Stopper

from gpt4all_ray.divergence import Decision, DivergencePolicy


class DivergenceStopper(Stopper):
    def __init__(self, policy: DivergencePolicy) -> None:
        self.policy = policy
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.steps: dict[str, set[int]] = {}
        self.decisions: dict[str, Decision] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if "val_loss" not in result:
            return False
        seen = self.steps.setdefault(trial_id, set())
        if result["step"] in seen:  # reported again after a restore: judged already
            return self.decisions[trial_id].stop
        seen.add(result["step"])
        evaluations = self.history.setdefault(trial_id, [])
        evaluations.append((float(result["epoch_progress"]), float(result["val_loss"])))
        decision = self.policy.decide([loss for _, loss in evaluations], [epoch for epoch, _ in evaluations])
        self.decisions[trial_id] = decision
        return decision.stop

    def stop_all(self) -> bool:
        return False
