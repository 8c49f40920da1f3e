"""The reliability ledger's trial counts come from a run's outputs: a trial with no result, one
that ended in error and one whose best checkpoint is missing each count as lost."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability.accounting import TrialCount, count_worker_trial


def test_a_trial_without_reports_or_with_an_error_is_lost(tmp_path: Path) -> None:
    assert count_worker_trial(tmp_path) == TrialCount(1, 0, 0, 0, 0)
    (tmp_path / "error.txt").write_text("NoUsableCheckpoint")
    count = count_worker_trial(tmp_path)
    assert (count.errored, count.lost) == (1, 1)


def test_a_trial_whose_best_checkpoint_is_missing_is_lost(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"val_loss": 3.2, "best_val_loss": 3.2}) + "\n")
    count = count_worker_trial(tmp_path)  # no model/ folder beside the reports
    assert count == TrialCount(1, 1, 0, 1, 0) and count.lost == 1
    assert count.ledger_fields()["trials_lost"] == 1


def test_an_error_from_a_killed_attempt_that_a_resumed_one_reported_after_is_not_the_outcome(
    tmp_path: Path,
) -> None:
    import os

    (tmp_path / "error.txt").write_text("gloo: connection closed by peer (the other rank was killed)")
    os.utime(tmp_path / "error.txt", (1_000, 1_000))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"val_loss": 3.2, "best_val_loss": 3.2}) + "\n")
    assert count_worker_trial(tmp_path).errored == 0
    (tmp_path / "error.txt").write_text("failed again, after the last report")
    assert count_worker_trial(tmp_path).errored == 1
