"""The small search tracked in MLflow and W&B (tune.tracking: mlflow,wandb; conftest's local_search),
read back with the trackers' own readers: MLflow's client on its local store, W&B's protobuf records
in its offline run folders. Each trial is one run, with its sampled hyperparameters, one point per
evaluation it reported, and the stop reason and best epoch its leaderboard row has."""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpt4all_ray.evaluation import evaluations
from gpt4all_ray.experiment.files import StoredTrial, stored_trials
from tests.integration.conftest import Experiment

pytestmark = pytest.mark.integration


def leaderboard(exp: Experiment) -> dict[str, dict[str, str]]:
    with (exp.dir / "leaderboard.csv").open() as f:
        return {row["trial_id"]: row for row in csv.DictReader(f)}


def trials(exp: Experiment) -> dict[str, StoredTrial]:
    """Each trial as Tune stored it: its params.json (the sampled values) and reported results."""
    return {t.trial_id: t for t in stored_trials(exp.dir)}


def reported_val_losses(trial: StoredTrial) -> list[float]:
    return [e.val_loss for e in evaluations(trial.history)]


def test_mlflow_holds_one_run_per_trial_with_its_params_evaluations_and_end(local_search: Experiment) -> None:
    from mlflow import MlflowClient

    assert local_search.tracking is not None
    client = MlflowClient(f"sqlite:///{local_search.tracking / 'mlflow.db'}")  # MLFLOW_TRACKING_URI's store
    experiment = client.get_experiment_by_name(local_search.dir.name)
    assert experiment is not None and experiment.artifact_location == str(local_search.dir / "mlflow-artifacts")
    found = client.search_runs([experiment.experiment_id])
    runs = {run.data.tags["trial_id"]: run for run in found}
    rows, stored = leaderboard(local_search), trials(local_search)
    assert len(found) == len(rows) and sorted(runs) == sorted(rows) == sorted(stored)  # one run a trial
    for trial_id, run in runs.items():
        row, trial = rows[trial_id], stored[trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.params == {key: str(value) for key, value in trial.params.items()}
        assert float(run.data.params["learning_rate"]) == float(row["learning_rate"])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == reported_val_losses(trial)
        # Each point at its optimizer step (Tune's iteration starts over when Tune restarts a trial).
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [e.step for e in evaluations(trial.history)]
        assert [float(v) for v in row["val_losses"].split()] == reported_val_losses(trial)  # epoch ends only here
        assert (run.data.tags["stop_reason"], run.data.tags["best_epoch"]) == (row["stop_reason"], row["best_epoch"])
        assert run.data.metrics["best_val_loss"] == float(row["best_val_loss"])  # the last point: the trial's best
        assert {"train_loss", "lr", "tokens_per_s", "epoch_progress"} <= set(run.data.metrics)
        assert not {"pid", "timestamp", "done", "checkpoint_score"} & set(run.data.metrics)  # Ray's, not tracked
    assert "MLflow runs:      experiment it in sqlite:///" in local_search.output


# W&B writes a run's records (history, summary, config) to its .wandb file in LevelDB's log format:
# a 7-byte header, then 32 KiB blocks of chunks, each a 7-byte header (checksum, length, type) and
# its bytes; a record is one FULL chunk or FIRST, MIDDLE..., LAST. wandb 0.31 ships no Python reader
# of its own (its Go core reads them), so this one reads the chunks and hands each record's bytes to
# wandb's own protobuf classes.
WANDB_FILE_HEADER = b":W&B\xe1\xbe\x00"
BLOCK, CHUNK_HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(WANDB_FILE_HEADER), data[: len(WANDB_FILE_HEADER)]
    pos, parts = len(WANDB_FILE_HEADER), []
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # a block's tail too short for a chunk is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0:  # zeroes: the rest of the block is padding
            pos += BLOCK - pos % BLOCK
            continue
        parts.append(data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(b"".join(parts))  # type: ignore[attr-defined]
            parts = []


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_run(folder: Path) -> dict[str, Any]:
    """An offline run folder's run record, its history rows and its final summary."""
    (records_file,) = folder.glob("run-*.wandb")
    run: Any = None
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for record in wandb_records(records_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary |= _items(record.summary.update)
    assert run is not None
    return {"run": run, "config": _items(run.config.update), "history": history, "summary": summary}


def test_wandb_offline_holds_one_run_per_trial_with_its_params_evaluations_and_end(local_search: Experiment) -> None:
    assert local_search.tracking is not None
    found = sorted((local_search.tracking / "wandb").glob("offline-run-*"))
    folders = {p.name.rsplit("-", 1)[1]: p for p in found}
    rows, stored = leaderboard(local_search), trials(local_search)
    assert len(found) == len(rows) and sorted(folders) == sorted(rows)  # one run folder a trial
    for trial_id, folder in folders.items():
        row, trial, tracked = rows[trial_id], stored[trial_id], wandb_run(folder)
        assert (tracked["run"].run_id, tracked["run"].run_group) == (trial_id, local_search.dir.name)
        assert tracked["run"].project == "gpt4all-ray"  # tune.wandb_project's default
        assert {key: tracked["config"][key] for key in trial.params} == trial.params
        points = tracked["history"]
        assert all("val_loss" in r for r in points)  # one row per evaluation, none for the trial's end
        assert [r["val_loss"] for r in points] == reported_val_losses(trial)
        assert [r["_step"] for r in points] == [e.step for e in evaluations(trial.history)]  # optimizer steps
        assert not {"pid", "timestamp", "done", "checkpoint_score"} & set().union(*points)
        summary = tracked["summary"]
        assert summary["stop_reason"] == row["stop_reason"]
        assert summary["best_epoch"] == int(row["best_epoch"])
        assert summary["best_val_loss"] == float(row["best_val_loss"])
    assert f"run folders in {local_search.tracking / 'wandb'}" in local_search.output
    # W&B's closing report per trial stays out of the progress lines; Ray's __del__ does not fail at exit.
    assert "Run history:" not in local_search.output and "Exception ignored" not in local_search.output
