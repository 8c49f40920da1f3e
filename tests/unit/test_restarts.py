"""A trial's worker failures, as its Ray Train controller hands them to the report bridge: each
one written once to the trial's storage folder, with the budget Ray Train charges it to (Ray's
own preemption rule), and every rank's node gathered into the durable report."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.exceptions import RayActorError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

from gpt4all_ray.evaluation import Evaluation
from gpt4all_ray.experiment.durable_reports import Restart, RestartCause, save_restart, saved_reports, saved_restarts
from gpt4all_ray.ray_private import charged_as_preemption, failed_workers
from gpt4all_ray.search.trial import DurableReportCallback


def died(actor: str, preempted: bool) -> Exception:
    """What Ray Train's poll holds for a worker whose node went away."""
    cause = RayActorError(actor_id=actor * 32, error_msg="the actor died with its node", preempted=preempted)
    return WorkerHealthCheckFailedError("A worker health check failed.", failure=cause)


def bridge(run_dir: str) -> DurableReportCallback:
    """The callback without Tune's session (TuneReportCallback's __init__ needs one; what it
    forwards to Tune is not what these tests check)."""
    callback = DurableReportCallback.__new__(DurableReportCallback)
    callback.run_dir, callback.trial_id, callback.seen = run_dir, "abc", set()
    return callback


def test_a_drained_nodes_worker_is_charged_as_preemption_and_others_as_failures() -> None:
    assert charged_as_preemption({0: died("a", preempted=True), 1: died("b", preempted=False)})
    assert not charged_as_preemption({1: died("b", preempted=False)})
    assert not charged_as_preemption({0: MemoryError("CUDA out of memory")})


def test_the_same_failure_polled_twice_is_one_restart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    callback = bridge(run_dir)
    first = {0: died("a", preempted=True), 1: died("b", preempted=True)}
    callback.after_exception(None, first)
    callback.after_exception(None, {0: died("a", preempted=True), 1: died("b", preempted=True)})  # polled again
    callback.after_exception(None, {1: MemoryError("CUDA out of memory")})  # the restarted group's rank 1
    restarts = saved_restarts(run_dir)
    assert [(r.cause, r.ranks) for r in restarts] == [(RestartCause.PREEMPTION, (0, 1)), (RestartCause.FAILURE, (1,))]
    assert restarts[0].error == "A worker health check failed."
    said = capsys.readouterr().out
    assert said.count("tune.preemption_restarts") == 1 and said.count("tune.worker_restarts") == 1


def test_failures_are_told_apart_by_their_actors() -> None:
    same = failed_workers({0: died("a", True)}), failed_workers({0: died("a", True)})
    assert same[0] == same[1] != failed_workers({0: died("c", True)})


def test_restarts_come_back_in_time_order(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    assert saved_restarts(run_dir) == []
    later = Restart(at=2000.5, cause=RestartCause.FAILURE, ranks=(1,), error="boom")
    earlier = Restart(at=1000.25, cause=RestartCause.PREEMPTION, ranks=(0, 1), error="gone")
    save_restart(run_dir, later)
    save_restart(run_dir, earlier)
    assert saved_restarts(run_dir) == [earlier, later]


def test_every_ranks_node_lands_in_the_durable_report(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    callback = bridge(run_dir)
    forwarded = []
    callback._training_actor_item_queue = type("Queue", (), {"put": lambda self, item: forwarded.append(item)})()
    ranks = [
        Evaluation(epoch=1, step=5, val_loss=2.0, best_val_loss=2.0, best_epoch=1, node_id=node).to_metrics()
        for node in ("n1", "n2")
    ]
    callback.after_report(None, ranks, None)
    (saved,) = saved_reports(run_dir)
    assert Evaluation.from_result(saved).worker_nodes == ["n1", "n2"]
    assert forwarded[0]["worker_nodes"] == ["n1", "n2"]  # Tune's copy too
    assert "worker_nodes" not in ranks[0]  # a worker's own report carries its node only
