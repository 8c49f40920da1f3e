"""Experiment tracking (tune.tracking): the settings, the preflight, what the callbacks send, and
Ray's MLflow callback against a real local MLflow store (no Ray cluster: Tune's callbacks are called
as Tune calls them). The whole path, W&B included, runs in tests/integration/test_tracking.py."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpt4all_ray.config import SpecError, load_spec
from gpt4all_ray.evaluation import TUNE_TIME, Evaluation, StopReason
from gpt4all_ray.experiment.stop_log import record_stop

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "search_spaces" / "tiny_cpu.yaml"


def space(tmp_path: Path, **tune: object) -> Path:
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["tune"] = {**(raw.get("tune") or {}), **tune}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def evaluation(epoch: int, val_loss: float, best_epoch: int, stop: StopReason = StopReason.RUNNING) -> Evaluation:
    return Evaluation(
        epoch=epoch,
        val_loss=val_loss,
        best_val_loss=min(val_loss, 3.0),
        best_epoch=best_epoch,
        step=10 * epoch,
        epoch_progress=float(epoch),
        best_step=10 * best_epoch,
        checkpoint_score=1e308,
        train_loss=3.2,
        lr=1e-3,
        stop_reason=stop,
        first_step_at=1.0,
        worker_started_at=0.5,
        tokens_per_s=1000.0,
        node_id="n1",
        worker_nodes=["n1", "n2"],
        phase_seconds={"evaluate": 0.5},
        probes={"stop_rate": 0.5},
        time_total_s=12.5 * epoch,
    )


def tune_result(e: Evaluation, iteration: int) -> dict:
    """As Tune hands a trial's report to its callbacks: the metrics and Tune's own keys."""
    ray_keys = {"training_iteration": iteration, "pid": 123, "hostname": "h", "date": "2026-12-07", "done": False}
    return e.to_metrics() | ray_keys | {TUNE_TIME: e.time_total_s, "config": {"learning_rate": 1e-3}}


def test_tracking_takes_one_or_both_trackers(tmp_path: Path) -> None:
    spec = load_spec(
        space(tmp_path, tracking=" wandb , mlflow", wandb_project="p", mlflow_tracking_uri="http://h:5000")
    )
    assert spec.tune.trackers == {"mlflow", "wandb"}
    assert load_spec(space(tmp_path)).tune.trackers == frozenset()  # TensorBoard only, by default
    overridden = load_spec(space(tmp_path), ["tune.tracking=mlflow,wandb"])  # as --set gives it
    assert overridden.tune.trackers == {"mlflow", "wandb"}


BAD_TRACKING = [
    ({"tracking": "tensorboard"}, "tune.tracking: expected mlflow or wandb, or both comma-separated"),
    ({"tracking": ["mlflow"]}, "tune.tracking: expected a string"),
    ({"tracking": "mlflow", "mlflow_tracking_uri": "./mlruns"}, "tune.mlflow_tracking_uri: expected a tracking URI"),
    ({"tracking": "mlflow", "mlflow_tracking_uri": "file:///tmp/mlruns"}, "tune.mlflow_tracking_uri: expected a"),
    ({"tracking": "mlflow", "mlflow_tracking_uri": "sqlite:///mlflow.db"}, "tune.mlflow_tracking_uri: expected a"),
    ({"tracking": "wandb", "wandb_project": "a/b"}, "tune.wandb_project: expected a W&B project name"),
    ({"mlflow_tracking_uri": "http://h:5000"}, "tune.mlflow_tracking_uri: is only used with tune.tracking: mlflow"),
    ({"tracking": "mlflow", "wandb_project": "p"}, "tune.wandb_project: is only used with tune.tracking: wandb"),
]


@pytest.mark.parametrize(("tune", "message"), BAD_TRACKING, ids=[m.split(": ", 1)[1] for _, m in BAD_TRACKING])
def test_a_bad_tracking_setting_is_refused_naming_the_key(tmp_path: Path, tune: dict, message: str) -> None:
    path = space(tmp_path, **tune)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_tracker_that_is_not_installed_is_refused_before_ray_starts(tmp_path: Path) -> None:
    # sys.modules[name] = None is how Python itself marks a module that cannot be imported.
    code = (
        "import sys; sys.modules['mlflow'] = None; from gpt4all_ray.cli.tune import main; rc = main(sys.argv[1:]); "
        "print('ray imported' if 'ray' in sys.modules else 'ray never imported'); sys.exit(rc)"
    )
    command = [sys.executable, "-c", code, "--space", str(space(tmp_path, tracking="wandb,mlflow"))]
    proc = subprocess.run([*command, "--results-dir", str(tmp_path / "results")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "tune.tracking: mlflow is not installed where the search runs" in proc.stderr
    assert "pip install 'gpt4all-ray[mlflow]'" in proc.stderr
    assert "ray never imported" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_only_the_evaluations_measurements_are_tracked() -> None:
    from gpt4all_ray.search.tracking import NOT_TRACKED, tracked_metrics

    sent = evaluation(2, 3.1, 1, StopReason.DIVERGED)
    tracked = tracked_metrics(tune_result(sent, iteration=2))
    assert tracked is not None
    assert {f.name for f in dataclasses.fields(Evaluation)} >= NOT_TRACKED  # each one names a field
    expected = set(sent.to_metrics()) - NOT_TRACKED | {TUNE_TIME, "training_iteration"}
    assert set(tracked) == expected  # no pid, date, done, config/... from Tune
    assert {"val_loss", "train_loss", "best_val_loss", "best_epoch", "lr", "tokens_per_s", "evaluate_s"} <= set(tracked)
    assert all(isinstance(v, float) and math.isfinite(v) for k, v in tracked.items() if k != "training_iteration")
    assert (tracked["val_loss"], tracked[TUNE_TIME]) == (3.1, 25.0)
    # The point's step, where Ray's W&B actor reads it: the optimizer step, not Tune's report count.
    assert tracked["training_iteration"] == sent.step != 2 and isinstance(tracked["training_iteration"], int)
    assert tracked_metrics({"training_iteration": 1, "pid": 123}) is None  # not an evaluation


@pytest.mark.parametrize(
    ("stop", "logged", "failed", "expected"),
    [
        (StopReason.DIVERGED, None, False, "diverged"),  # the workers' own decision
        (StopReason.RUNNING, StopReason.ASHA, False, "asha"),  # decided in the driver: the stop log says
        (StopReason.RUNNING, None, False, "stopped"),  # neither: Tune stopped it
        (StopReason.RUNNING, None, True, "error"),
    ],
)
def test_a_trials_end_is_read_as_the_leaderboard_reads_it(
    tmp_path: Path, stop: StopReason, logged: StopReason | None, failed: bool, expected: str
) -> None:
    from gpt4all_ray.search.tracking import trial_end

    if logged:
        record_stop(tmp_path, "t1", logged)
    end = trial_end("t1", tune_result(evaluation(3, 3.4, 2, stop), iteration=3), failed, tmp_path)
    assert end == {"stop_reason": expected, "best_epoch": 2, "best_step": 20, "best_val_loss": 3.0, "epochs_run": 3}


def test_a_trial_that_never_reported_ends_with_no_result(tmp_path: Path) -> None:
    from gpt4all_ray.search.tracking import trial_end

    assert trial_end("t1", {"trial_id": "t1"}, False, tmp_path)["stop_reason"] == StopReason.NO_RESULT.value


def test_the_mlflow_store_is_the_setting_else_the_variable_else_the_experiments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt4all_ray.search.tracking import mlflow_tracking_uri

    exp_dir = tmp_path / "exp"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        mlflow_tracking_uri(load_spec(space(tmp_path, tracking="mlflow")), exp_dir) == f"sqlite:///{exp_dir}/mlflow.db"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert mlflow_tracking_uri(load_spec(space(tmp_path, tracking="mlflow")), exp_dir) == "http://env:5000"
    spec = load_spec(space(tmp_path, tracking="mlflow", mlflow_tracking_uri="http://space:5000"))
    assert mlflow_tracking_uri(spec, exp_dir) == "http://space:5000"


def test_the_callbacks_are_the_ones_asked_for_and_survive_tunes_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.cloudpickle

    from gpt4all_ray.search.tracking import tracking_callbacks
    from gpt4all_ray.search.tracking_mlflow import TrialMLflow
    from gpt4all_ray.search.tracking_wandb import TrialWandb

    exp_dir = tmp_path / "my-experiment"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert tracking_callbacks(load_spec(space(tmp_path)), exp_dir) == []
    spec = load_spec(space(tmp_path, tracking="mlflow,wandb", wandb_project="proj"))
    # Tuner pickles its RunConfig, callbacks included (tuner.pkl): --resume unpickles them.
    mlflow_cb, wandb_cb = ray.cloudpickle.loads(ray.cloudpickle.dumps(tracking_callbacks(spec, exp_dir)))
    assert isinstance(mlflow_cb, TrialMLflow) and isinstance(wandb_cb, TrialWandb)
    assert mlflow_cb.experiment_name == "my-experiment"
    assert mlflow_cb.tracking_uri == f"sqlite:///{exp_dir}/mlflow.db"
    assert mlflow_cb.artifact_location == str(exp_dir / "mlflow-artifacts")
    assert (wandb_cb.project, wandb_cb.group) == ("proj", "my-experiment")
    assert (wandb_cb.kwargs["dir"], wandb_cb.kwargs["mode"]) == (str(exp_dir), "offline")  # resolved in the driver
    served = load_spec(space(tmp_path, tracking="mlflow", mlflow_tracking_uri="http://h:5000"))
    (served_cb,) = tracking_callbacks(served, exp_dir)
    assert (served_cb.tracking_uri, served_cb.artifact_location) == ("http://h:5000", None)  # the server's own


def test_mlflow_tracks_a_trial_in_a_real_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    from gpt4all_ray.search.tracking_mlflow import TrialMLflow

    monkeypatch.chdir(tmp_path)  # anything MLflow would write to the working directory shows up here
    uri = f"sqlite:///{tmp_path / 'exp' / 'mlflow.db'}"
    (tmp_path / "exp").mkdir()
    callback = TrialMLflow(uri, "exp", tmp_path / "exp", str(tmp_path / "exp" / "mlflow-artifacts"))
    callback.setup()
    trial = Trial("trial_driver", config={"learning_rate": 0.0123, "lr_schedule": "cosine"}, trial_id="t1", stub=True)
    callback.log_trial_start(trial)
    reported = [evaluation(1, 3.0, 1), evaluation(2, 3.3, 1, StopReason.DIVERGED)]
    for i, e in enumerate(reported, 1):
        trial.update_last_result(tune_result(e, iteration=i))  # as Tune does before calling back
        callback.log_trial_result(i, trial, trial.last_result)
    callback.log_trial_result(3, trial, {"training_iteration": 3, "pid": 1})  # Tune's own: not tracked
    callback.log_trial_end(trial)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exp")
    assert experiment is not None
    assert experiment.artifact_location == str(tmp_path / "exp" / "mlflow-artifacts")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params == {"learning_rate": "0.0123", "lr_schedule": "cosine"}
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(e.step, e.val_loss) for e in reported]  # optimizer steps
    assert "pid" not in run.data.metrics and "checkpoint_score" not in run.data.metrics
    assert not any(key.startswith("config") for key in run.data.metrics)
    ended = {key: run.data.tags[key] for key in ("trial_id", "stop_reason", "best_epoch", "epochs_run")}
    assert ended == {"trial_id": "t1", "stop_reason": "diverged", "best_epoch": "1", "epochs_run": "2"}
    assert run.info.status == "FINISHED"
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]


def test_the_closing_lines_say_where_each_tracker_put_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt4all_ray.search.tracking import where_tracked

    exp_dir = tmp_path / "my-experiment"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    assert where_tracked(load_spec(space(tmp_path)), exp_dir) == []
    mlflow, wandb = where_tracked(load_spec(space(tmp_path, tracking="mlflow,wandb")), exp_dir)
    assert f"experiment my-experiment in sqlite:///{exp_dir}/mlflow.db" in mlflow and "pip install mlflow" in mlflow
    folder = tmp_path / "wb" / "wandb"  # W&B makes wandb/ in WANDB_DIR
    assert wandb.endswith(f"project gpt4all-ray, group my-experiment (online; run folders in {folder})")


def mlflow_callback(tmp_path: Path, set_up: bool = True) -> tuple[Any, str]:
    from gpt4all_ray.search.tracking_mlflow import TrialMLflow

    uri = f"sqlite:///{tmp_path / 'exp' / 'mlflow.db'}"
    (tmp_path / "exp").mkdir(exist_ok=True)
    callback = TrialMLflow(uri, "exp", tmp_path / "exp", str(tmp_path / "exp" / "mlflow-artifacts"))
    if set_up:
        callback.setup()
    return callback, uri


def test_a_resumed_trial_goes_on_in_its_mlflow_run(tmp_path: Path) -> None:
    import ray.cloudpickle
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    callback, uri = mlflow_callback(tmp_path, set_up=False)
    saved = ray.cloudpickle.dumps(callback)  # Tune keeps its callbacks as the Tuner was made, before fit() sets them up
    callback.setup()
    trial = Trial("trial_driver", config={"learning_rate": 0.01}, trial_id="t1", stub=True)
    callback.log_trial_start(trial)
    first, second = evaluation(1, 3.0, 1), evaluation(2, 2.9, 2)
    trial.update_last_result(tune_result(first, iteration=1))
    callback.log_trial_result(1, trial, trial.last_result)
    # --resume: Tune unpickles its callbacks and sets them up again; the trial starts again, its
    # iteration count from 1, its optimizer steps from its checkpoint.
    resumed = ray.cloudpickle.loads(saved)
    resumed.setup()
    resumed.log_trial_start(trial)
    trial.update_last_result(tune_result(second, iteration=1))
    resumed.log_trial_result(1, trial, trial.last_result)
    resumed.log_trial_end(trial)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(first.step, 3.0), (second.step, 2.9)]
    assert run.info.status == "FINISHED" and run.data.tags["best_epoch"] == "2"


def test_a_trial_the_search_stopped_is_ended_with_the_experiment(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    callback, uri = mlflow_callback(tmp_path)
    ended, stopped = (Trial("trial_driver", config={}, trial_id=t, stub=True) for t in ("t1", "t2"))
    for trial in (ended, stopped):
        callback.log_trial_start(trial)
        trial.update_last_result(tune_result(evaluation(1, 3.0, 1), iteration=1))
        callback.log_trial_result(1, trial, trial.last_result)
    callback.log_trial_end(ended)
    # tune.gpu_hours or time_budget_s stops the rest: Tune calls no trial end for them.
    callback.on_experiment_end([ended, stopped])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted((r.data.tags["trial_id"], r.info.status, r.data.tags["best_epoch"]) for r in runs) == [
        ("t1", "FINISHED", "1"),
        ("t2", "FINISHED", "1"),
    ]


def test_an_mlflow_store_from_the_environment_is_checked_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt4all_ray.cli.preflight import check_tracking

    spec = load_spec(space(tmp_path, tracking="mlflow"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(SpecError, match="MLFLOW_TRACKING_URI=file:///tmp/mlruns .*: expected a tracking URI"):
        check_tracking(spec)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")  # sqlite:////abs: accepted
    check_tracking(spec)


def test_the_wandb_project_is_the_setting_else_the_variable_else_gpt4all_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt4all_ray.search.tracking import DEFAULT_WANDB_PROJECT, wandb_project

    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert wandb_project(load_spec(space(tmp_path, tracking="wandb"))) == DEFAULT_WANDB_PROJECT
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert wandb_project(load_spec(space(tmp_path, tracking="wandb"))) == "from-env"
    assert wandb_project(load_spec(space(tmp_path, tracking="wandb", wandb_project="p"))) == "p"
