"""The report contract: what a worker sends is what every reader gets back."""

from __future__ import annotations

import json
import math

import pytest

from gpt4all_ray.evaluation import (
    CHECKPOINT_PATH,
    PHASES,
    REQUIRED,
    Evaluation,
    StopReason,
    evaluations,
)


def full_evaluation() -> Evaluation:
    return Evaluation(
        epoch=2,
        val_loss=3.1,
        best_val_loss=3.0,
        best_epoch=1,
        step=40,
        epoch_end=True,
        epoch_progress=2.0,
        best_step=20,
        checkpoint_score=1e308,
        train_loss=3.2,
        lr=1e-3,
        epoch_s=4.5,
        stop_reason=StopReason.DIVERGED,
        resumed_from_step=20,
        skipped_steps=1,
        train_s=8.0,
        first_step_at=1.0,
        worker_started_at=0.5,
        tokens_per_s=1000.0,
        grad_norm=0.7,
        val_ppl=math.exp(3.1),
        phase_seconds={phase: float(i) for i, phase in enumerate(PHASES)},
        probes={"stop_rate": 0.5, "mean_new_tokens": 12.0},
    )


def test_a_report_survives_rays_json_and_reads_back_equal() -> None:
    sent = full_evaluation()
    carried = json.loads(json.dumps(sent.to_metrics()))  # result.json, the durable reports
    assert carried["stop_reason"] == "diverged" and carried["probe_stop_rate"] == 0.5 and "mfu" not in carried
    assert Evaluation.from_result(carried) == sent


def test_tunes_own_keys_are_read_and_others_ignored() -> None:
    result = full_evaluation().to_metrics() | {"time_total_s": 12.5, CHECKPOINT_PATH: "/x/checkpoint_1"}
    result |= {"training_iteration": 2, "config": {"learning_rate": 1e-3}}
    back = Evaluation.from_result(result)
    assert back is not None and (back.time_total_s, back.checkpoint_path) == (12.5, "/x/checkpoint_1")


def test_a_result_without_a_validation_loss_is_no_evaluation_and_a_partial_one_is_refused() -> None:
    assert Evaluation.from_result({"time_total_s": 3.0}) is None
    for missing in REQUIRED[:1] + REQUIRED[2:]:
        partial = {key: 1 for key in REQUIRED if key != missing}
        with pytest.raises(ValueError, match=missing):
            Evaluation.from_result(partial)


def test_the_checkpoint_path_key_is_tunes() -> None:
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    assert CHECKPOINT_PATH == CHECKPOINT_PATH_KEY


def test_stop_reasons_read_as_their_values_and_only_decisions_stop_early() -> None:
    assert [str(reason) for reason in StopReason][:3] == ["", "completed", "diverged"]
    assert not StopReason.RUNNING and StopReason("asha") is StopReason.ASHA
    early = {reason for reason in StopReason if reason.stopped_early}
    assert early == {
        StopReason.DIVERGED,
        StopReason.NON_FINITE,
        StopReason.STOPPED,
        StopReason.ASHA,
        StopReason.GPU_HOURS,
    }


def test_a_step_reported_twice_counts_once_the_last_report_winning() -> None:
    first = full_evaluation().to_metrics()
    again = first | {"val_loss": 2.9}
    later = first | {"step": 60, "epoch": 3}
    history = [later, first, {"time_total_s": 1.0}, again]
    assert [(e.step, e.val_loss) for e in evaluations(history)] == [(40, 2.9), (60, 3.1)]
