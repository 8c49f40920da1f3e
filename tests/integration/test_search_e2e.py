"""One real search, end to end: leaderboard, best checkpoint, divergence, Optuna's values, TensorBoard."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from gpt4all_ray.experiment.compute import TIMED as PHASE_NAMES
from gpt4all_ray.experiment.compute import phase_seconds
from gpt4all_ray.inspection.evaluate import validation_loss
from tests.integration.conftest import REPO, SMALL_SPACE, Experiment

pytestmark = pytest.mark.integration

SPACE = yaml.safe_load((REPO / SMALL_SPACE).read_text())
PLANTED_LR = SPACE["enqueue"][0]["learning_rate"]


def leaderboard(exp: Experiment) -> list[dict[str, str]]:
    with (exp.dir / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def test_local_ray_started_and_progress_printed_as_it_ran(local_search: Experiment) -> None:
    out = local_search.output
    assert "started a local Ray instance" in out
    assert out.count("epoch 1/") == SPACE["tune"]["num_trials"]
    assert "-> stopped: validation loss rose above its best" in out
    assert "NaN or Inf found" not in out  # no inf metric (checkpoint_score of a rise) reached Tune's loggers
    assert f"tensorboard --logdir {local_search.dir / 'tensorboard'}" in out


def test_every_requested_trial_is_in_the_leaderboard(local_search: Experiment) -> None:
    rows = leaderboard(local_search)
    assert len(rows) == SPACE["tune"]["num_trials"]
    assert len({r["trial_id"] for r in rows}) == len(rows)
    assert all(r["stop_reason"] in ("completed", "diverged") for r in rows)
    md = (local_search.dir / "leaderboard.md").read_text()
    assert all(r["trial_id"] in md for r in rows)
    for column in (
        "learning_rate",
        "lr_schedule",
        "warmup_steps",
        "weight_decay",
        "epochs",
        "best_val_loss",
        "best_epoch",
        "epochs_run",
        "stop_reason",
        "wall_s",
        "setup_data_s",
        "setup_model_s",
    ):
        assert column in rows[0]
    # Each trial's setup, beside its wall time: timed by its workers, a part of that time.
    assert all(0 < float(r["setup_data_s"]) + float(r["setup_model_s"]) < float(r["wall_s"]) for r in rows)


def test_best_checkpoint_reloads_and_gives_the_recorded_loss(local_search: Experiment) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    best = json.loads((local_search.dir / "best.json").read_text())
    folder = Path(best["checkpoint_path"])
    assert folder == local_search.dir / "best"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "GPTJForCausalLM"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (folder / "model.safetensors").is_file()
    assert best["best_val_loss"] == min(float(r["best_val_loss"]) for r in leaderboard(local_search))
    assert validation_loss(folder) == pytest.approx(best["best_val_loss"], rel=1e-4)


def test_planted_diverging_trial_is_stopped_and_scored_by_its_best_epoch(local_search: Experiment) -> None:
    planted = [r for r in leaderboard(local_search) if math.isclose(float(r["learning_rate"]), PLANTED_LR)]
    assert len(planted) == 1
    row = planted[0]
    losses = [float(v) for v in row["val_losses"].split()]
    best = float(row["best_val_loss"])
    assert row["stop_reason"] == "diverged"
    assert row["start"] == "enqueued"  # the leaderboard says it was not sampled
    assert all(r["start"] == "" for r in leaderboard(local_search) if r["trial_id"] != row["trial_id"])
    assert int(row["epochs_run"]) == len(losses) < int(row["epochs"])  # stopped early
    assert losses[-1] > best == min(losses)  # stopped at a rise above its best...
    assert not any(losses[i] > min(losses[:i]) for i in range(1, len(losses) - 1))  # ...its first one
    assert int(row["best_epoch"]) == losses.index(best) + 1
    assert float(row["searcher_value"]) == pytest.approx(best, rel=1e-9)  # Optuna holds the best, not the last

    trial_dir = local_search.dir / "ray" / "train" / row["trial_id"]
    # Ray keeps two: the best (with the exported model) and the latest. The trial has ended, so
    # neither keeps its resume state; the best still reloads to its loss.
    kept = sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2 and not any((p / "resume").exists() for p in kept)
    (model,) = [p for p in kept if (p / "metrics.json").is_file()]
    assert model == kept[0] and json.loads((model / "metrics.json").read_text())["epoch"] == int(row["best_epoch"])
    assert validation_loss(model) == pytest.approx(best, rel=1e-4)


def test_tensorboard_holds_each_trials_train_and_validation_loss(local_search: Experiment) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for row in leaderboard(local_search):
        events = EventAccumulator(str(local_search.dir / "tensorboard" / row["trial_id"]))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        # At ZeRO-0 DeepSpeed has no gradient norm: the loop measures it (TrialRun.check_finite_step).
        assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss"} <= tags
        assert all(math.isfinite(e.value) and e.value > 0 for e in events.Scalars("train/grad_norm"))
        val = [e.value for e in events.Scalars("val/loss")]
        assert val == pytest.approx([float(v) for v in row["val_losses"].split()], rel=1e-6)
        # HParams beside the curves: the trial's sampled values.
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        logged = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert logged["learning_rate"].number_value == pytest.approx(float(row["learning_rate"]), rel=1e-12)
        assert logged["lr_schedule"].string_value == row["lr_schedule"]


def test_optuna_study_is_persisted_with_each_trials_best_epoch(local_search: Experiment) -> None:
    import optuna

    study = optuna.load_study(study_name="it", storage=f"sqlite:///{local_search.dir / 'optuna.db'}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == len(leaderboard(local_search))
    for t in trials:
        (row,) = [r for r in leaderboard(local_search) if float(r["learning_rate"]) == t.params["learning_rate"]]
        assert t.user_attrs["best_epoch"] == int(row["best_epoch"])
        assert t.value == pytest.approx(float(row["best_val_loss"]), rel=1e-9)
        assert t.user_attrs["stop_reason"] == row["stop_reason"] and t.user_attrs["best_step"] > 0
    assert f"optuna-dashboard sqlite:///{local_search.dir / 'optuna.db'}" in local_search.output


def test_report_regenerates_from_the_stored_experiment_and_matches_the_leaderboard(
    local_search: Experiment, tmp_path: Path
) -> None:
    import shutil

    from gpt4all_ray.experiment.report import main as report_main

    copy = tmp_path / "copy"
    shutil.copytree(local_search.dir, copy, ignore=shutil.ignore_patterns("best", "tensorboard"))
    for generated in ("summary.md", "leaderboard.csv", "leaderboard.md", "best.json", "val_loss.png"):
        (copy / generated).unlink()
    assert report_main([str(copy)]) == 0
    assert (copy / "leaderboard.csv").read_text() == (local_search.dir / "leaderboard.csv").read_text()
    figures = json.loads((copy / "figures.json").read_text())
    rows = leaderboard(local_search)
    for row in rows:  # the curves drawn are the leaderboard's losses, the best marked where it says
        curve = figures["val_loss"][row["trial_id"]]
        assert [y for _, y in curve["points"]] == pytest.approx([float(v) for v in row["val_losses"].split()])
        assert curve["best"][1] == pytest.approx(float(row["best_val_loss"]))
        assert curve["stopped"] == (row["stop_reason"] == "diverged")
    assert (copy / "val_loss.png").stat().st_size > 10_000 and (copy / "hyperparameters.png").is_file()
    summary = (copy / "summary.md").read_text()
    best = min(rows, key=lambda r: float(r["best_val_loss"]))
    assert f"Trial {best['trial_id']}:" in summary and "Why it won: lowest validation loss" in summary
    assert summary.count("- ") >= len(rows) and "saved by stopping early" in summary


def test_each_trial_times_its_phases_and_the_summary_splits_the_wall_time(local_search: Experiment) -> None:
    from gpt4all_ray.evaluation import evaluations
    from gpt4all_ray.experiment.files import stored_trials

    for trial in stored_trials(local_search.dir):
        last = evaluations(trial.history)[-1]
        # Ray Train took its time to start the workers (measured from fit() in the trial's driver).
        assert 0 < last.phase_seconds["worker_group"] < last.time_total_s
        timed = phase_seconds(last)
        assert timed is not None and set(timed) == set(PHASE_NAMES)
        assert min(timed.values()) >= 0 and sum(timed.values()) < last.time_total_s
    summary = (local_search.dir / "summary.md").read_text()
    table = summary.split("Where the trials' wall time went:")[1].split("## Figures")[0]
    assert "| training steps |" in table and "| starting the trial's workers" in table
    assert "each at what an epoch cost it" in summary


def test_the_data_is_tokenized_once_for_every_trial(local_search: Experiment) -> None:
    from gpt4all_ray.data.cache import BUILDS
    from gpt4all_ray.experiment.files import DATA_CACHE

    cache = local_search.dir / DATA_CACHE
    (build,) = [json.loads(line) for line in (cache / BUILDS).read_text().splitlines()]
    assert (cache / build["key"]).is_dir() and "tokenized once, built in" in local_search.output
    assert len(leaderboard(local_search)) == SPACE["tune"]["num_trials"] > 1  # every trial mapped that one


def test_every_ended_trial_kept_its_model_and_dropped_its_resume_state(local_search: Experiment) -> None:
    from gpt4all_ray.train.checkpoint import RESUME_DIR

    checkpoints = list((local_search.dir / "ray" / "train").glob("*/checkpoint_*"))
    assert len({c.parent for c in checkpoints}) == SPACE["tune"]["num_trials"]
    assert checkpoints and not [c for c in checkpoints if (c / RESUME_DIR).exists()]
    assert "0 with resume state" in (local_search.dir / "summary.md").read_text()
