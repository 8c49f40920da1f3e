"""The Optuna searcher: TPE, a Gaussian process or random sampling (a baseline), a persistent
study, and what each trial found told to it.

The study lives in SQLite in the experiment folder by default (`optuna-dashboard sqlite:///...`
opens it; it outlives the driver), or in any RDB URL given as `tune.optuna_storage` on a cluster.
Ray's OptunaSearch tells Optuna only the value; this subclass also records each trial's best
epoch and step, why it stopped and its best checkpoint's probe scores, as the trial's user
attributes; with tune.min_stop_rate, TPE and GP take the stop rate as a constraint.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from gpt4all_ray.config import SearchSpec, TuneSettings
from gpt4all_ray.evaluation import Evaluation
from gpt4all_ray.experiment.files import default_storage_url
from gpt4all_ray.experiment.stop_log import read_stops, stopped_by


class TellingOptunaSearch(OptunaSearch):
    exp_dir: str | None = None  # class default: a searcher pickled before the stop log had none

    def __init__(
        self, *args: Any, min_stop_rate: float = 0.0, exp_dir: str | Path | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_stop_rate = min_stop_rate  # saved with the searcher's __dict__ for --resume
        self.exp_dir = str(exp_dir) if exp_dir else None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # A restored trial re-reporting after the study already closed it (see below): nothing to add.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        evaluation = Evaluation.from_result(result) if result else None
        if result and not math.isfinite(float(result.get(self.metric, math.nan))):
            # No finite loss ever (non-finite from the first evaluation): Optuna gets a failure,
            # not a value (Ray's OptunaSearch tells any value it finds as COMPLETE).
            result, error = {k: v for k, v in result.items() if k != self.metric}, True
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            try:
                ot_trial.set_user_attr("ray_trial_id", trial_id)  # the report maps study rows to trials
                if evaluation is not None:
                    for key, value in told(evaluation).items():
                        ot_trial.set_user_attr(key, value)
                # Stopped in the driver (ASHA, a budget): the workers said nothing, the stop log does.
                by = stopped_by(read_stops(Path(self.exp_dir)), trial_id) if self.exp_dir else None
                if result and by and not (evaluation and evaluation.stop_reason):
                    ot_trial.set_user_attr("stop_reason", by.value)
                if self.min_stop_rate:
                    # TPE models infeasible trials (constraint > 0) apart from the good ones.
                    stop_rate = evaluation.probes.get("stop_rate", 0.0) if evaluation else 0.0
                    ot_trial.set_constraint("min_stop_rate", self.min_stop_rate - stop_rate)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Told before the driver was killed; the restored searcher's snapshot is older than
                # the study it writes to. The study already holds this trial: nothing to add.
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)


def told(evaluation: Evaluation) -> dict[str, Any]:
    """What the study keeps of a trial's last evaluation, as user attributes (optuna-dashboard
    shows them beside the value)."""
    attributes: dict[str, Any] = {
        "best_epoch": evaluation.best_epoch,
        "best_step": evaluation.best_step,
        "epoch": evaluation.epoch,
        "stop_reason": evaluation.stop_reason.value,
    }
    return attributes | {
        f"probe_{name}": evaluation.probes[name] for name in ("stop_rate", "exact_match") if name in evaluation.probes
    }


def storage_url(spec: SearchSpec, exp_dir: Path) -> str:
    return spec.tune.optuna_storage or default_storage_url(exp_dir)


def make_sampler(tune: TuneSettings) -> optuna.samplers.BaseSampler:
    """Each model's first `startup_trials` draws are the random sampler's with the same seed, so
    searches of one seed start alike, whichever model they use."""
    if tune.searcher == "random":
        return optuna.samplers.RandomSampler(seed=tune.seed)
    if tune.searcher == "gp":
        return optuna.samplers.GPSampler(seed=tune.seed, n_startup_trials=tune.startup_trials)
    return optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=tune.startup_trials)


def make_searcher(
    spec: SearchSpec, exp_dir: Path, metric: str, points: list[dict[str, Any]] | None
) -> TellingOptunaSearch:
    exp_dir.mkdir(parents=True, exist_ok=True)
    tune = spec.tune
    return TellingOptunaSearch(
        metric=metric,
        mode="min",
        points_to_evaluate=points,
        sampler=make_sampler(tune),
        study_name=exp_dir.name,
        storage=optuna.storages.RDBStorage(storage_url(spec, exp_dir)),
        min_stop_rate=tune.min_stop_rate,
        exp_dir=exp_dir.resolve(),
    )
