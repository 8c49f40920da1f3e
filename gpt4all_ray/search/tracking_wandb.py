"""Weights & Biases tracking (tune.tracking: wandb): Ray Tune's WandbLoggerCallback, one run per
trial in the project tune.wandb_project, grouped by the experiment's name (what and where:
tracking.py). Ray logs each trial from an actor of its own on the driver's node; that process
imports this module (and so not MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.tune.experiment import Trial

from gpt4all_ray.search.tracking import left_open, tracked_metrics, trial_end

TRIAL_END = "gpt4all_ray_trial_end"
"""The key of the one queue item that is no result: the trial's end, for the run's summary."""


class SummarizingWandbActor(_WandbLoggingActor):
    """Ray's W&B logging actor (one process per trial), writing the trial's end to the run summary."""

    def _handle_result(self, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if TRIAL_END in result:
            self._wandb.run.summary.update(result[TRIAL_END])
            return {}, {}  # nothing to log or configure: no history row is added
        return super()._handle_result(result)


def _loaded(queue_actor: Any) -> None:
    """Run in a trial's queue actor, where unpickling it imported this module and Ray's W&B module."""


class TrialWandb(WandbLoggerCallback):
    """Ray's WandbLoggerCallback (the run per trial, its config, its logging actor), logging the
    evaluations' metrics only and summarizing each run with how the trial ended."""

    _logger_actor_cls = SummarizingWandbActor

    def __init__(self, project: str, group: str, exp_dir: Path, **init_kwargs: Any) -> None:
        super().__init__(project=project, group=group, **init_kwargs)
        self.exp_dir = exp_dir
        self.ended: set[str] = set()  # its actor may still be finishing: its queue is still there

    def log_trial_start(self, trial: Trial) -> None:
        super().log_trial_start(trial)
        self.ended.discard(trial.trial_id)
        # The trial's queue actor imports Ray's W&B module (and wandb: a second or more) when it
        # unpickles its first item; Tune's driver would wait for that at the trial's first report,
        # a wait Tune leaves out of the trial's time_total_s. Begun now, it is over by then.
        self._trial_queues[trial].actor.__ray_call__.remote(_loaded)  # type: ignore[union-attr]  # an actor here

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        metrics = tracked_metrics(result)
        if metrics is not None:
            super().log_trial_result(iteration, trial, metrics)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        # Queued before the end, so the actor writes it before wandb.finish().
        end = trial_end(trial.trial_id, trial.last_result, failed, self.exp_dir)
        super().log_trial_result(0, trial, {TRIAL_END: end})
        super().log_trial_end(trial, failed)
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Else its actor waits for an end until Ray's upload timeout (30 minutes) and is killed
        # before wandb.finish(), with no summary.
        for trial, failed in left_open(trials, self._trial_queues, self.ended):
            self.log_trial_end(trial, failed)
        super().on_experiment_end(trials, **info)

    def __del__(self) -> None:
        # At interpreter exit Ray's module globals are already None and its __del__ fails (after
        # on_experiment_end stopped the actors). No contextlib.suppress: this module's globals go too.
        try:  # noqa: SIM105
            super().__del__()
        except AttributeError:
            pass
