"""Experiment tracking (tune.tracking): Ray Tune's own MLflow and Weights & Biases logger callbacks
(tracking_mlflow.py, tracking_wandb.py), each tracking one run per trial. They run in the Tune
driver (under `ray job submit`, on the head node), next to the progress lines and the stop log.

What a run holds, in both:
- its parameters (MLflow params, W&B config): the trial's sampled hyperparameters (Tune's trial
  config), as Ray's callbacks log them;
- one point per evaluation, at its optimizer step: the evaluation's own metrics (tracked_metrics),
  not Ray's bookkeeping (pid, timestamps, config/*). Not Tune's training_iteration: a trial Tune
  restarts (a driver lost to preemption, --resume) counts its reports from 1 again, while its
  optimizer steps go on from its checkpoint;
- at its end, what the leaderboard says of it (trial_end): stop reason, best epoch and step, best
  validation loss, epochs run; MLflow tags, the W&B run summary. A trial the search ends without
  ending it itself (a budget, an interrupt) is ended at the experiment's end.

A trial resumed by --resume goes on in its run: MLflow's is found by its trial_id tag, W&B's by
its id (resume="allow").

Where the runs land: MLflow in tune.mlflow_tracking_uri, else MLFLOW_TRACKING_URI, else SQLite in the
experiment folder (mlflow.db); W&B in the project tune.wandb_project, grouped by the experiment's
name, its run folders under WANDB_DIR, else the experiment folder's wandb/ (Ray's W&B logging actors
run on the driver's node), uploaded or not as WANDB_MODE says. Both are resolved here, in the
driver, and pickled with the callbacks, so a --resume tracks to the same place.

This module imports neither MLflow nor W&B: the driver imports them only where tracking asks for them.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune.experiment import Trial

from gpt4all_ray.config import SearchSpec
from gpt4all_ray.evaluation import TUNE_TIME, Evaluation
from gpt4all_ray.experiment.records import record_from_history
from gpt4all_ray.experiment.stop_log import read_stops, stopped_by

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlflow-artifacts"
DEFAULT_WANDB_PROJECT = "gpt4all-ray"
WANDB_FOLDER = "wandb"  # W&B itself makes this folder under the directory it is given

# Fields of an evaluation that are not measurements: where it ran, when its worker started, the
# score Ray ranks checkpoints by (the largest float where the loss did not improve: it would flatten
# every chart), and the workers' stop decision (a string; the trial's end says it once, as its
# stop_reason).
NOT_TRACKED = frozenset(
    {"node_id", "worker_nodes", "worker_started_at", "first_step_at", "checkpoint_score", "epoch_end", "stop_reason"}
)


def tracked_metrics(result: dict[str, Any]) -> dict[str, float] | None:
    """A Tune result -> the evaluation's metrics as floats, with Tune's wall seconds of the trial,
    and under training_iteration the point's step: the optimizer step (Ray's W&B actor logs each
    point at that key; the MLflow callback here reads it too). None for a result that is no
    evaluation."""
    evaluation = Evaluation.from_result(result)
    if evaluation is None:
        return None
    metrics = {key: float(value) for key, value in evaluation.to_metrics().items() if key not in NOT_TRACKED}
    return metrics | {TUNE_TIME: evaluation.time_total_s, TRAINING_ITERATION: evaluation.step}


def trial_end(trial_id: str, last_result: dict[str, Any] | None, failed: bool, exp_dir: Path) -> dict[str, Any]:
    """What the leaderboard will say of an ending trial, from its last result and the stop log:
    the same rule (experiment/records.py), so a run's stop reason and best epoch are its row's."""
    stops = stopped_by(read_stops(exp_dir), trial_id)
    record = record_from_history(trial_id, {}, [last_result] if last_result else [], failed, stops)
    return {
        "stop_reason": record.stop_reason.value,
        "best_epoch": record.best_epoch,
        "best_step": record.best_step,
        "best_val_loss": record.best_val_loss,
        "epochs_run": record.epochs_run,
    }


def left_open(
    trials: Iterable[Trial], started: Container[Trial], ended: Container[str]
) -> Iterator[tuple[Trial, bool]]:
    """The trials a tracker started and no trial end reached (the search stopped them itself:
    tune.gpu_hours, time_budget_s, an interrupt; Tune calls no trial end then), each with whether
    it failed: a tracker ends them at the experiment's end."""
    for trial in trials:
        if trial in started and trial.trial_id not in ended:
            yield trial, trial.status == Trial.ERROR


def mlflow_tracking_uri(spec: SearchSpec, exp_dir: Path) -> str:
    """The space's setting, else the driver's MLFLOW_TRACKING_URI, else SQLite in the experiment
    (MLflow 3 refuses a plain-folder store unless told to; SQLite needs no server)."""
    return spec.tune.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{exp_dir / MLFLOW_DB}"


def wandb_init_kwargs(exp_dir: Path) -> dict[str, Any]:
    """wandb.init's arguments beside Ray's: the mode and folder, read from the driver's environment
    (the logging actors do not share it on a cluster: Ray passes them only WANDB_API_KEY)."""
    folder = Path(os.environ.get("WANDB_DIR") or exp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("WANDB_MODE")
    return {
        "dir": str(folder),
        **({"mode": mode} if mode else {}),
        # W&B's own closing report (some 40 lines a trial) would bury the progress lines; it still
        # says where each run's data goes. Ray passes reinit=True, which W&B 0.31 warns is deprecated.
        "settings": {"quiet": True},
        "reinit": "finish_previous",
        "resume": "allow",  # a trial resumed by --resume goes on in its run (Ray passes resume=False)
    }


def wandb_project(spec: SearchSpec) -> str:
    """The space's tune.wandb_project, else the driver's WANDB_PROJECT, else gpt4all-ray."""
    return spec.tune.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT


def tracking_callbacks(spec: SearchSpec, exp_dir: Path) -> list[Any]:
    """The callbacks tune.tracking asks for (none by default: TensorBoard only), for the experiment
    in exp_dir, named after it."""
    callbacks: list[Any] = []
    if "mlflow" in spec.tune.trackers:
        from gpt4all_ray.search.tracking_mlflow import TrialMLflow

        uri = mlflow_tracking_uri(spec, exp_dir)
        # A tracking server keeps the artifacts itself; with a database MLflow would pick ./mlruns of
        # whatever directory the driver runs in (Ray's copy of the job's, under `ray job submit`).
        server = uri.startswith(("http://", "https://", "databricks"))
        artifacts = None if server else str(exp_dir / MLFLOW_ARTIFACTS)
        callbacks.append(TrialMLflow(uri, exp_dir.name, exp_dir, artifacts))
    if "wandb" in spec.tune.trackers:
        from gpt4all_ray.search.tracking_wandb import TrialWandb

        callbacks.append(TrialWandb(wandb_project(spec), exp_dir.name, exp_dir, **wandb_init_kwargs(exp_dir)))
    return callbacks


def where_tracked(spec: SearchSpec, exp_dir: Path) -> list[str]:
    """One line per tracker, for the search's closing lines."""
    lines = []
    if "mlflow" in spec.tune.trackers:
        uri = mlflow_tracking_uri(spec, exp_dir)
        # The extra installs mlflow-skinny, which has no UI server: the full package does.
        browse = uri if uri.startswith("http") else f"pip install mlflow; mlflow ui --backend-store-uri {uri}"
        lines.append(f"MLflow runs:      experiment {exp_dir.name} in {uri} (to browse: {browse})")
    if "wandb" in spec.tune.trackers:
        mode = os.environ.get("WANDB_MODE") or "online"
        folder = Path(os.environ.get("WANDB_DIR") or exp_dir) / WANDB_FOLDER
        where = f"project {wandb_project(spec)}, group {exp_dir.name}"
        lines.append(f"W&B runs:         {where} ({mode}; run folders in {folder})")
    return lines
