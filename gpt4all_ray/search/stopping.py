"""What stops trials in the Tune driver: the divergence policy as a Stopper, judging each trial on
the validation losses it reported (epoch-level or step-level evaluations), a GPU-hour budget for
the whole search, and ASHA. The stoppers are saved with the experiment state and compose
(`tune.stopper.CombinedStopper`); each decision is written to the experiment's stop log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from gpt4all_ray.divergence import Decision, DivergencePolicy
from gpt4all_ray.evaluation import TUNE_TIME, Evaluation, StopReason
from gpt4all_ray.experiment.files import ASHA_RUNGS
from gpt4all_ray.experiment.stop_log import EVERY_TRIAL, record_stop


class DivergenceStopper(Stopper):
    exp_dir: str | None = None  # class defaults: a stopper pickled before the stop log had none

    def __init__(self, policy: DivergencePolicy, exp_dir: str | Path | None = None) -> None:
        self.policy = policy
        self.exp_dir = str(exp_dir) if exp_dir else None
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.steps: dict[str, set[int]] = {}
        self.decisions: dict[str, Decision] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        evaluation = Evaluation.from_result(result)
        if evaluation is None:
            return False
        seen = self.steps.setdefault(trial_id, set())
        if evaluation.step in seen:  # reported again after a restore: judged already
            return self.decisions[trial_id].stop
        seen.add(evaluation.step)
        evaluations = self.history.setdefault(trial_id, [])
        evaluations.append((evaluation.epoch_progress, evaluation.val_loss))
        decision = self.policy.decide([loss for _, loss in evaluations], [epoch for epoch, _ in evaluations])
        self.decisions[trial_id] = decision
        if decision.stop:
            record_stop(self.exp_dir, trial_id, decision.reason, epoch=evaluation.epoch_progress)
        return decision.stop

    def stop_all(self) -> bool:
        return False


class GpuHourBudget(Stopper):
    """Ends the search once its trials have used `hours` GPU-hours (each trial's running time
    times its GPUs; a trial's time counts from its first report)."""

    exp_dir: str | None = None
    spent = False

    def __init__(self, hours: float, gpus_per_trial: float, exp_dir: str | Path | None = None) -> None:
        self.hours = hours
        self.gpus_per_trial = gpus_per_trial
        self.exp_dir = str(exp_dir) if exp_dir else None
        self.seconds: dict[str, float] = {}
        self.spent = False

    def used_hours(self) -> float:
        return sum(self.seconds.values()) * self.gpus_per_trial / 3600

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.seconds[trial_id] = float(result.get(TUNE_TIME, 0.0))  # Tune's, on every result
        return False

    def stop_all(self) -> bool:
        if not self.spent and self.used_hours() >= self.hours:
            self.spent = True
            record_stop(self.exp_dir, EVERY_TRIAL, StopReason.GPU_HOURS, hours=round(self.used_hours(), 3))
        return self.spent


class RecordedASHA(ASHAScheduler):
    """Ray's ASHA, writing each trial it stops before max_t to the stop log, and keeping its rungs
    in the experiment folder. Ray 2.60's TuneController leaves the scheduler out of the experiment
    state, and Tuner.restore brings back the scheduler as it was pickled at the start: without the
    file a resumed search would judge its next trials against empty rungs."""

    _rungs_loaded = False  # class default: the object restored from the start's pickle has not loaded them

    def __init__(self, exp_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exp_dir = str(exp_dir) if exp_dir else None

    def _rungs_file(self) -> Path | None:
        return Path(self.exp_dir) / ASHA_RUNGS if self.exp_dir else None

    def _load_rungs(self) -> None:
        """Once per driver: the rungs a killed driver recorded (none in a new experiment)."""
        if self._rungs_loaded:
            return
        self._rungs_loaded = True
        file = self._rungs_file()
        if file and file.is_file():
            saved = json.loads(file.read_text())
            for bracket, rungs in zip(self._brackets, saved, strict=True):
                bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]

    def _save_rungs(self) -> None:
        file = self._rungs_file()
        if file:
            rungs = [[[milestone, recorded] for milestone, recorded in b._rungs] for b in self._brackets]
            partial = file.with_suffix(".partial")
            partial.write_text(json.dumps(rungs))
            partial.replace(file)  # a driver killed mid-write leaves the previous rungs whole

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load_rungs()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        self._load_rungs()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save_rungs()
        if action == TrialScheduler.STOP and result.get(self._time_attr, self._max_t) < self._max_t:
            record_stop(self.exp_dir, trial.trial_id, StopReason.ASHA, epoch=result[self._time_attr])
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._load_rungs()
        super().on_trial_complete(tune_controller, trial, result)
        self._save_rungs()
