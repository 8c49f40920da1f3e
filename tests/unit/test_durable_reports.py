"""Reports written to the trial's storage folder survive a driver whose result.json never got
there, and are merged into the stored experiment by step."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from gpt4all_ray.evaluation import Evaluation
from gpt4all_ray.experiment.durable_reports import save_report, saved_reports
from gpt4all_ray.experiment.files import stored_trials


def evaluation(step: int, loss: float) -> Evaluation:
    return Evaluation(epoch=1, step=step, val_loss=loss, best_val_loss=loss, best_epoch=1, train_loss=3.5)


def test_reports_come_back_in_step_order_and_a_redone_step_keeps_its_last_report(tmp_path: Path) -> None:
    run_dir = f"file://{tmp_path}/train/abc"
    assert saved_reports(run_dir) == []  # never reported
    for step, loss in [(20, 2.5), (5, 3.0), (10, 2.8), (20, 2.4)]:
        save_report(run_dir, evaluation(step, loss), f"/ckpt/{step}")
    saved = saved_reports(run_dir)
    assert [(r["step"], r["val_loss"]) for r in saved] == [(5, 3.0), (10, 2.8), (20, 2.4)]
    assert Evaluation.from_result(saved[-1]) == replace(evaluation(20, 2.4), checkpoint_path="/ckpt/20")


def test_the_stored_experiment_holds_reports_that_result_json_lost(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    trial = exp / "ray" / "tune" / "trial_driver_abc12_00001_1_lr=0.01"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"learning_rate": 0.01}))
    # The resumed trial's new result.json: only what came after the driver was killed.
    (trial / "result.json").write_text(json.dumps({"step": 20, "val_loss": 2.4, "time_total_s": 9.0}) + "\n")
    for step, loss in [(5, 3.0), (10, 2.8), (20, 2.4)]:
        save_report(str(exp / "ray" / "train" / "abc12"), evaluation(step, loss), None)
    (stored,) = stored_trials(exp)
    assert [h["step"] for h in stored.history] == [5, 10, 20, 20]
    assert stored.history[-1]["time_total_s"] == 9.0  # Tune's copy of a step comes last: it wins
