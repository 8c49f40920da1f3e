"""MLflow tracking (tune.tracking: mlflow): Ray Tune's MLflowLoggerCallback, one run per trial in
the experiment named after the search (what and where: tracking.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.experiment import Trial

from gpt4all_ray.search.tracking import left_open, tracked_metrics, trial_end


class TrialMLflow(MLflowLoggerCallback):
    """Ray's MLflowLoggerCallback (the run per trial, its params, its status), logging the
    evaluations' metrics only, tagging each run with its trial id at the start and how the trial
    ended at the end, and going on in a resumed trial's run."""

    def __init__(self, tracking_uri: str, experiment_name: str, exp_dir: Path, artifact_location: str | None) -> None:
        super().__init__(tracking_uri, experiment_name=experiment_name)
        self.exp_dir = exp_dir
        self.artifact_location = artifact_location
        self.ended: set[str] = set()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        if self.artifact_location:
            # Created here with its artifact folder (tracking.py); Ray's setup then finds it by name.
            self.mlflow_util.setup_mlflow(
                tracking_uri=self.tracking_uri,
                experiment_name=self.experiment_name,
                artifact_location=self.artifact_location,
            )
        super().setup(*args, **kwargs)

    def _client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _tag(self, trial: Trial, tags: dict[str, Any]) -> None:
        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        self._client().log_batch(self._trial_runs[trial], tags=batch)

    def log_trial_start(self, trial: Trial) -> None:
        if trial not in self._trial_runs:
            # --resume sets the callback up anew: the trial's run is found by its tag, not made again.
            client = self._client()
            experiment = client.get_experiment_by_name(str(self.experiment_name))  # always named here
            found = experiment and client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.trial_id = '{trial.trial_id}'"
            )
            if found:
                self._trial_runs[trial] = found[0].info.run_id
                client.update_run(found[0].info.run_id, status="RUNNING")
        super().log_trial_start(trial)
        self._tag(trial, {"trial_id": trial.trial_id})
        self.ended.discard(trial.trial_id)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        metrics = tracked_metrics(result)
        if metrics is None:
            return
        # One write per evaluation: Ray's callback writes each metric on its own (some 30 database
        # transactions), in the Tune driver's loop that every trial's next report waits on.
        step, now = int(metrics[TRAINING_ITERATION]), int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        self._client().log_batch(self._trial_runs[trial], metrics=batch)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        if trial not in self._trial_runs:  # it failed before it started (its actor could not be made)
            self.log_trial_start(trial)
        self._tag(trial, trial_end(trial.trial_id, trial.last_result, failed, self.exp_dir))
        super().log_trial_end(trial, failed)
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for trial, failed in left_open(trials, self._trial_runs, self.ended):  # else: RUNNING, no stop reason
            self.log_trial_end(trial, failed)
        super().on_experiment_end(trials, **info)
