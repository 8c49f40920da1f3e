"""Trials counted from what a run left behind, never written by hand: how many were requested, how
many have a result, how many ended in error, how many have a best checkpoint that is missing or
does not reload to its recorded loss. A trial is kept when it has a result, did not end in error
and its best checkpoint reloads; every other requested trial is lost."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpt4all_ray.experiment.files import SETTINGS, storage_root, stored_trials
from gpt4all_ray.experiment.records import record_from_history
from gpt4all_ray.experiment.storage import fetch_checkpoint
from gpt4all_ray.inspection.evaluate import validation_loss
from gpt4all_ray.train.checkpoint import RESUME_DIR

RELOAD_TOLERANCE = 1e-4  # relative: the loop's all-reduced loss against one process's


@dataclass(frozen=True)
class TrialCount:
    requested: int
    with_result: int
    errored: int
    best_unusable: int
    """Trials with a result whose best checkpoint is missing or does not reload to its loss."""
    kept: int

    @property
    def lost(self) -> int:
        return self.requested - self.kept

    def ledger_fields(self) -> dict[str, int]:
        return {
            "trials_requested": self.requested,
            "trials_with_result": self.with_result,
            "trials_errored": self.errored,
            "trials_best_unusable": self.best_unusable,
            "trials_lost": self.lost,
        }


def reloads_to(folder: Path, loss: float) -> bool:
    try:
        return math.isfinite(loss) and math.isclose(validation_loss(folder), loss, rel_tol=RELOAD_TOLERANCE)
    except (OSError, ValueError, KeyError):  # missing or unreadable files
        return False


def count_search(exp_dir: Path) -> TrialCount:
    """A search's trials, from its experiment folder (Tune's trial folders and the checkpoints in
    its storage)."""
    requested = int(json.loads((exp_dir / SETTINGS).read_text())["num_trials"])
    with_result = errored = unusable = kept = 0
    for trial in stored_trials(exp_dir):
        record = record_from_history(trial.trial_id, trial.params, trial.history, trial.error)
        has_result = bool(record.val_losses) or math.isfinite(record.best_val_loss)
        with_result += has_result
        errored += trial.error
        if not has_result:
            continue
        usable = False
        if record.checkpoint_path:
            with tempfile.TemporaryDirectory() as tmp:
                fetch_checkpoint(storage_root(exp_dir), record.checkpoint_path, Path(tmp), skip=RESUME_DIR)
                usable = reloads_to(Path(tmp), record.best_val_loss)
        unusable += not usable
        kept += usable and not trial.error
    return TrialCount(requested, with_result, errored, unusable, kept)


def count_worker_trial(out: Path) -> TrialCount:
    """One trial run by worker ranks without Ray (tests/integration/worker_runs.py), over all its
    attempts: its reports, its error.txt, and the model folder of its best evaluation."""
    metrics, error = out / "metrics.jsonl", out / "error.txt"
    reports = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    # A killed attempt's surviving rank writes error.txt too; the trial ended in error only when
    # nothing was reported after it (a later attempt that resumed and reported is the outcome).
    errored = error.is_file() and (not reports or error.stat().st_mtime >= metrics.stat().st_mtime)
    if not reports:
        return TrialCount(1, 0, int(errored), 0, 0)
    usable = reloads_to(out / "model", reports[-1]["best_val_loss"])
    return TrialCount(1, 1, int(errored), int(not usable), int(usable and not errored))
