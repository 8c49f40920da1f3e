"""Leaderboard rows, best.json and the best checkpoint copy, from per-epoch histories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from gpt4all_ray.evaluation import StopReason
from gpt4all_ray.experiment.records import record_from_history, write_report

ERROR = StopReason.ERROR


def epochs(losses: list[float], reasons: list[str], ckpt_dir: Path | None = None) -> list[dict]:
    history, best, best_at = [], math.inf, 0
    for i, (loss, reason) in enumerate(zip(losses, reasons, strict=True), start=1):
        improved = loss < best
        if improved:
            best, best_at = loss, i
        row = {
            "epoch": i,
            "val_loss": loss,
            "best_val_loss": best,
            "best_epoch": best_at,
            "stop_reason": reason,
            "time_total_s": 10.0 * i,
            "setup_data_s": 1.5,  # every attempt's so far: a trial's last report holds its total
            "setup_model_s": 0.25 * i,
        }
        if improved and ckpt_dir is not None:
            folder = ckpt_dir / f"checkpoint_{i}"
            folder.mkdir(parents=True)
            (folder / "model.safetensors").write_text(f"epoch {i}")
            row["checkpoint_path"] = str(folder)
        history.append(row)
    return history


def test_diverged_trial_keeps_its_best_epoch(tmp_path: Path) -> None:
    record = record_from_history(
        "a", {"learning_rate": 0.1}, epochs([3.0, 2.5, 2.7], ["", "", "diverged"], tmp_path), error=False
    )
    assert (record.best_val_loss, record.best_epoch, record.epochs_run) == (2.5, 2, 3)
    assert record.stop_reason == "diverged"
    assert record.checkpoint_path == str(tmp_path / "checkpoint_2")
    assert record.wall_s == 30.0
    assert (record.setup_data_s, record.setup_model_s) == (1.5, 0.75)  # the last report's
    assert record.val_losses == [3.0, 2.5, 2.7]


def test_errored_trial_without_results_is_still_a_row() -> None:
    record = record_from_history("b", {"learning_rate": 0.2}, [], error=True)
    assert record.stop_reason == ERROR and record.epochs_run == 0 and math.isinf(record.best_val_loss)


def test_report_ranks_by_best_loss_and_copies_the_best_checkpoint(tmp_path: Path) -> None:
    good = record_from_history(
        "good", {"learning_rate": 0.01}, epochs([3.0, 2.0], ["", "completed"], tmp_path / "g"), error=False
    )
    bad = record_from_history(
        "bad", {"learning_rate": 0.1}, epochs([3.0, 3.5], ["", "diverged"], tmp_path / "b"), error=False
    )
    failed = record_from_history("failed", {"learning_rate": 1.0}, [], error=True)
    good.searcher_value = 2.0
    best = write_report(tmp_path / "exp", [bad, failed, good], ["learning_rate"], {"good": {"epochs": 2}})
    assert best is not None
    assert best.record.trial_id == "good" and best.record.best_val_loss == 2.0 and best.record.best_epoch == 2
    assert best.checkpoint == (tmp_path / "exp" / "best").resolve() and best.config == {"epochs": 2}
    assert (tmp_path / "exp" / "best" / "model.safetensors").read_text() == "epoch 2"
    assert json.loads((tmp_path / "exp" / "best.json").read_text())["config"] == {"epochs": 2}
    with (tmp_path / "exp" / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == ["good", "bad", "failed"]
    assert rows[0]["val_losses"] == "3.0 2.0" and rows[2]["stop_reason"] == "error"
    wall = rows[0]["wall_s"], rows[0]["setup_data_s"], rows[0]["setup_model_s"]
    assert wall == ("20.0", "1.5", "0.5") and rows[2]["setup_data_s"] == ""  # no report: not timed
    assert "| good | 0.01 |" in (tmp_path / "exp" / "leaderboard.md").read_text()


def test_no_checkpoint_means_no_best(tmp_path: Path) -> None:
    failed = record_from_history("failed", {}, [], error=True)
    assert write_report(tmp_path, [failed], [], {}) is None
    assert not (tmp_path / "best.json").exists()


def test_a_step_level_best_is_found_and_best_holds_the_model_not_the_resume_state(tmp_path: Path) -> None:
    """Every evaluation reports a resumable checkpoint; the model is exported where loss improved."""
    rows, best = [], math.inf
    for step, loss, epoch_end in [(5, 3.0, False), (10, 2.5, True), (15, 2.2, False), (20, 2.4, True)]:
        folder = tmp_path / f"checkpoint_{step}"
        (folder / "resume").mkdir(parents=True)
        (folder / "resume" / "optim_states.pt").write_text("large")
        if loss < best:
            best = loss
            (folder / "model.safetensors").write_text(f"step {step}")
        rows.append(
            {
                "epoch": 1 + (step > 10),
                "step": step,
                "epoch_end": epoch_end,
                "val_loss": loss,
                "best_val_loss": best,
                "best_epoch": 2 if best == 2.2 else 1,
                "best_step": {3.0: 5, 2.5: 10, 2.2: 15}[best],
                "stop_reason": "completed" if step == 20 else "",
                "checkpoint_path": str(folder),
            }
        )
    record = record_from_history("t", {}, rows, error=False)
    assert (record.best_val_loss, record.best_epoch, record.best_step, record.epochs_run) == (2.2, 2, 15, 2)
    assert record.val_losses == [2.5, 2.4]  # epoch ends only
    assert record.checkpoint_path == str(tmp_path / "checkpoint_15")
    summary = write_report(tmp_path / "exp", [record], [], {})
    assert summary is not None and summary.record.best_step == 15
    assert (tmp_path / "exp" / "best" / "model.safetensors").read_text() == "step 15"
    assert not (tmp_path / "exp" / "best" / "resume").exists()


def test_a_step_reported_again_after_a_restore_counts_once() -> None:
    first = epochs([3.0, 2.5], ["", ""])
    for i, row in enumerate(first, start=1):
        row["step"] = 10 * i
    again = dict(first[1])  # the resumed trial re-reports its last evaluation
    final = {**first[1], "step": 30, "epoch": 3, "val_loss": 2.4, "best_val_loss": 2.4, "best_epoch": 3}
    record = record_from_history("t", {}, [*first, again, final], error=False)
    assert record.val_losses == [3.0, 2.5, 2.4] and record.epochs_run == 3


def test_parameter_importances_are_plotted_from_five_completed_trials(tmp_path: Path) -> None:
    import optuna

    from gpt4all_ray.experiment.report import plot_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: t.suggest_float("learning_rate", 1e-4, 1e-1, log=True) + 0 * t.suggest_int("epochs", 1, 4), 4
    )
    assert plot_importances(study, tmp_path / "few.png") is None and not (tmp_path / "few.png").exists()
    study.optimize(
        lambda t: t.suggest_float("learning_rate", 1e-4, 1e-1, log=True) + 0 * t.suggest_int("epochs", 1, 4), 4
    )
    importances = plot_importances(study, tmp_path / "importances.png")
    assert importances is not None and set(importances) == {"learning_rate", "epochs"}
    assert importances["learning_rate"] > importances["epochs"]  # the value depends on it alone
    assert (tmp_path / "importances.png").stat().st_size > 1000


def test_a_later_tie_does_not_take_the_best_checkpoint(tmp_path: Path) -> None:
    """Weights frozen by skipped steps evaluate to the best loss again; only the evaluation that
    set the best exported the model, so its checkpoint is the one kept and copied."""
    history = [
        {"step": 5, "epoch": 1, "val_loss": 3.0, "best_val_loss": 3.0, "best_epoch": 1, "best_step": 5},
        {"step": 10, "epoch": 1, "val_loss": 2.5, "best_val_loss": 2.5, "best_epoch": 1, "best_step": 10},
        {"step": 15, "epoch": 1, "val_loss": 2.5, "best_val_loss": 2.5, "best_epoch": 1, "best_step": 10},
    ]
    for h in history:
        h["checkpoint_path"] = str(tmp_path / f"step-{h['step']}")
    record = record_from_history("a", {}, history, error=False)
    assert record.checkpoint_path == str(tmp_path / "step-10")
