"""A warm-started search, end to end: GPT4All's logged configurations run first, mapped into the
space with their learning rates scaled by sqrt(k) for its global batch, and the leaderboard says
which trials were warm starts."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

from gpt4all_ray.experiment.files import stored_trials
from gpt4all_ray.search.warm_starts import TRAINING_LOG
from tests.integration.conftest import run_search

pytestmark = pytest.mark.integration
SPACE = "tests/integration/warm_space.yaml"
GLOBAL_BATCH, LR_RANGE = 16, (1e-5, 1e-2)  # warm_space.yaml


def test_logged_runs_run_first_scaled_and_named_in_the_leaderboard(tmp_path: Path) -> None:
    run_search([sys.executable, "-m", "gpt4all_ray.tune", "--results-dir", str(tmp_path), "--name", "w"], SPACE)
    exp = tmp_path / "w"
    with (exp / "leaderboard.csv").open() as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    in_order = [rows[t.trial_id] for t in stored_trials(exp)]  # Tune's creation order
    assert len(in_order) == 5
    assert [r["start"] for r in in_order[:4]] == [f"training log: {run.name}" for run in TRAINING_LOG]
    assert in_order[4]["start"] == ""  # sampled by the searcher
    for row, run in zip(in_order, TRAINING_LOG, strict=False):
        # sqrt(k) with k = this batch / the logged run's batch, then clipped into the space
        scaled = run.values["learning_rate"] * math.sqrt(GLOBAL_BATCH / run.global_batch)
        assert float(row["learning_rate"]) == pytest.approx(min(max(scaled, LR_RANGE[0]), LR_RANGE[1]), rel=1e-12)
        assert row["lr_schedule"] == run.values["lr_schedule"] and float(row["weight_decay"]) == 0.0
    assert all(r["stop_reason"] in ("completed", "diverged") for r in in_order)
    assert "training log: GPT4All-J full, GPT-J-6B (final)" in (exp / "leaderboard.md").read_text()
