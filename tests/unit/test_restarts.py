"""A trial's worker failures, as its Ray Train controller decides on them: each decision written
once to the trial's storage folder, with the budget Ray Train charges it to (Ray's own preemption
rule) and whether it restarted the workers; and every rank's node gathered into the durable
report. The controller's state changes are Ray's own state objects, fed to the callback as the
controller feeds them."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.exceptions import RayActorError
from ray.train import PreemptionError, PreemptionInfo, WorkerGroupError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2._internal.execution.controller.state import (
    ErroredState,
    PreemptingState,
    RestartingState,
    RunningState,
    ShuttingDownState,
)

from gpt4all_ray.evaluation import Evaluation
from gpt4all_ray.experiment.durable_reports import Restart, RestartCause, save_restart, saved_reports, saved_restarts
from gpt4all_ray.search.trial import DurableReportCallback, restart_recorder


def died(actor: str, preempted: bool) -> Exception:
    """What Ray Train's poll holds for a worker whose node went away."""
    cause = RayActorError(actor_id=actor * 32, error_msg="The actor died with its node.", preempted=preempted)
    return WorkerHealthCheckFailedError("A worker health check failed.", failure=cause)


def group_error(**by_rank: Exception) -> WorkerGroupError:
    failures = {int(rank.removeprefix("r")): error for rank, error in by_rank.items()}
    return WorkerGroupError("worker errors", failures)


def test_each_decision_is_recorded_once_with_its_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    recorder = restart_recorder(run_dir, "abc")
    running = RunningState()
    # A node drained for preemption took rank 1 (rank 0 failed with it): restarted, preemption budget.
    preempted = group_error(r0=RuntimeError("gloo: connection reset"), r1=died("b", preempted=True))
    recorder.after_controller_state_update(running, RestartingState(training_failed_error=preempted))
    # A preemption Ray Train waited out (its watcher saw the drain; no worker had died yet).
    info = PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"node-3": [0, 1]})
    waited = PreemptionError(preemption_info=info, drain_timed_out=True)
    recorder.after_controller_state_update(
        PreemptingState(preemption_info=info, detected_at_s=0.0), RestartingState(training_failed_error=waited)
    )
    # Out of memory twice with worker_restarts 1: restarted, then the trial ends.
    oom = group_error(r1=MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    recorder.after_controller_state_update(running, RestartingState(training_failed_error=oom))
    errored = ErroredState(training_failed_error=oom)
    recorder.after_controller_state_update(running, ShuttingDownState(next_state=errored))  # not a decision
    recorder.after_controller_state_update(ShuttingDownState(next_state=errored), errored)
    restarts = saved_restarts(run_dir)
    assert [(r.cause, r.ranks, r.restarted) for r in restarts] == [
        (RestartCause.PREEMPTION, (0, 1), True),
        (RestartCause.PREEMPTION, (0, 1), True),
        (RestartCause.FAILURE, (1,), True),
        (RestartCause.FAILURE, (1,), False),
    ]
    assert restarts[0].error == "gloo: connection reset"  # the lowest failed rank's own error
    assert restarts[2].error == "CUDA out of memory. Tried to allocate 2.00 GiB"
    said = capsys.readouterr().out
    assert said.count("restarts its workers from the last checkpoint") == 3
    assert "ends the trial: tune.worker_restarts is spent" in said


def test_a_health_check_failure_is_told_by_the_death_it_reports(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    restart_recorder(run_dir, "abc").after_controller_state_update(
        RunningState(), RestartingState(training_failed_error=group_error(r0=died("a", preempted=False)))
    )
    (restart,) = saved_restarts(run_dir)
    assert restart.cause is RestartCause.FAILURE and restart.error == "The actor died with its node."


def test_a_storage_that_fails_does_not_fail_the_trial(capsys: pytest.CaptureFixture[str]) -> None:
    recorder = restart_recorder("file:///proc/not-writable/train/abc", "abc")
    recorder.after_controller_state_update(
        RunningState(), RestartingState(training_failed_error=group_error(r0=MemoryError("oom")))
    )
    assert "could not record its restart" in capsys.readouterr().out


def test_restarts_come_back_in_time_order(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    assert saved_restarts(run_dir) == []
    later = Restart(at=2000.5, cause=RestartCause.FAILURE, ranks=(1,), error="boom", restarted=False)
    earlier = Restart(at=1000.25, cause=RestartCause.PREEMPTION, ranks=(0, 1), error="gone")
    save_restart(run_dir, later)
    save_restart(run_dir, earlier)
    assert saved_restarts(run_dir) == [earlier, later]


def test_every_ranks_node_lands_in_the_durable_report(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    # Without Tune's session (TuneReportCallback's __init__ needs one); a queue stands in for it.
    bridge = DurableReportCallback.__new__(DurableReportCallback)
    bridge.run_dir, forwarded = run_dir, []
    bridge._training_actor_item_queue = type("Queue", (), {"put": lambda self, item: forwarded.append(item)})()
    ranks = [
        Evaluation(epoch=1, step=5, val_loss=2.0, best_val_loss=2.0, best_epoch=1, node_id=node).to_metrics()
        for node in ("n1", "n2")
    ]
    bridge.after_report(None, ranks, None)
    (saved,) = saved_reports(run_dir)
    assert Evaluation.from_result(saved).worker_nodes == ["n1", "n2"]
    assert Evaluation.from_result(forwarded[0]).worker_nodes == ["n1", "n2"]  # Tune's copy too
    assert isinstance(forwarded[0]["worker_nodes"], str)  # Tune's TensorBoard logger skips strings quietly
    assert "worker_nodes" not in ranks[0]  # a worker's own report carries its node only
