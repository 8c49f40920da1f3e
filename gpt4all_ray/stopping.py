"""Ray Tune Stoppers: the divergence policy, judging each trial on the validation losses it
reported (epoch-level or step-level evaluations), and a GPU-hour budget for the whole search.
Both are saved with the experiment state and compose (`tune.stopper.CombinedStopper`)."""

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


class GpuHourBudget(Stopper):
    """Ends the search once its trials have used `hours` GPU-hours (each trial's running time
    times its GPUs; a trial's time counts from its first report)."""

    def __init__(self, hours: float, gpus_per_trial: float) -> None:
        self.hours = hours
        self.gpus_per_trial = gpus_per_trial
        self.seconds: dict[str, float] = {}

    def used_hours(self) -> float:
        return sum(self.seconds.values()) * self.gpus_per_trial / 3600

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.seconds[trial_id] = float(result.get("time_total_s", 0.0))
        return False

    def stop_all(self) -> bool:
        return self.used_hours() >= self.hours
