"""Ray's private API, used in gpt4all_ray/ray_private.py (and private attributes elsewhere):
each test names what a Ray upgrade removed, so the fix starts from the right place."""

from __future__ import annotations

import logging
from pathlib import Path

from gpt4all_ray import ray_private


def test_address_lookups_exist_and_answer() -> None:
    assert ray_private.ray_address_file().endswith("ray_current_cluster")
    address = ray_private.auto_address()
    assert address is None or ":" in address


def test_train_report_logger_is_found_and_quieted() -> None:
    from ray.train.v2._internal.execution import context

    ray_private.quiet_train_report_logger()
    assert logging.getLogger(context.__file__).level == logging.WARNING


def test_asha_keeps_its_rungs_where_recorded_asha_reads_them() -> None:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3, metric="m", mode="min")
    rungs = asha._brackets[0]._rungs  # search/stopping.py saves and restores these
    assert [milestone for milestone, _ in rungs] == [9, 3, 1]
    assert all(isinstance(recorded, dict) for _, recorded in rungs)


def test_optuna_search_keeps_its_trials_where_the_searcher_reads_them() -> None:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="min")
    assert search._ot_trials == {} and search._completed_trials == set()  # search/searcher.py reads both


def test_train_controller_failure_states_are_where_the_restart_recorder_reads_them() -> None:
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.execution.callback import ControllerCallback
    from ray.train.v2._internal.execution.controller.state import ErroredState, RunningState

    calls: list[tuple[Exception, bool, bool]] = []
    recorder = ray_private.failure_decisions(lambda *decision: calls.append(decision))
    error = WorkerGroupError("worker errors", {1: MemoryError("CUDA out of memory")})
    recorder.after_controller_state_update(RunningState(), ErroredState(training_failed_error=error))
    assert isinstance(recorder, ControllerCallback) and calls == [(error, False, False)]
    assert ray_private.first_worker_error(error) == ([1], "CUDA out of memory")


def test_rays_tracking_callbacks_keep_what_search_tracking_reads_and_replaces(tmp_path: Path) -> None:
    import inspect

    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    mlflow_callback = MLflowLoggerCallback(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="e")
    mlflow_callback.setup()
    assert mlflow_callback._trial_runs == {}  # trial -> run id: search/tracking_mlflow.py
    # search/tracking_wandb.py puts a subclass of the W&B logging actor in its place, overriding _handle_result.
    assert WandbLoggerCallback._logger_actor_cls is _WandbLoggingActor
    assert WandbLoggerCallback(project="p")._trial_queues == {}  # trial -> its ray.util.queue.Queue
    assert "self._handle_result(item_content)" in inspect.getsource(_WandbLoggingActor.run)
    assert "self._wandb = wandb" in inspect.getsource(_WandbLoggingActor.__init__)
    # The actor logs each point at the result's training_iteration (tracking.py puts the optimizer step there).
    assert "step=log.get(TRAINING_ITERATION)" in inspect.getsource(_WandbLoggingActor.run)
    # tracking_mlflow.py makes the experiment with its artifact folder through Ray's MLflow helper.
    assert "artifact_location" in inspect.signature(mlflow_callback.mlflow_util.setup_mlflow).parameters
    # tracking_wandb.py warms a trial's queue actor up with the method every Ray actor has.
    import ray.actor

    assert "__ray_call__" in inspect.getsource(ray.actor)
