"""Experiment outcome -> <results dir>/<experiment>/: leaderboard (CSV + Markdown), best.json and the
best checkpoint in Hugging Face format under best/."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt4all_ray.evaluation import StopReason, evaluations
from gpt4all_ray.experiment.storage import fetch_checkpoint
from gpt4all_ray.train.checkpoint import RESUME_DIR


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_step: int = 0
    epochs_run: int = 0
    restarts: int = 0
    """Times the trial's workers died and were resumed from a checkpoint."""
    stop_reason: StopReason = StopReason.NO_RESULT
    wall_s: float = 0.0
    setup_data_s: float | None = None
    """Seconds its workers spent building rows, tokenizer and encoded examples, all attempts (rank
    0's; None where the workers did not time it)."""
    setup_model_s: float | None = None
    """Seconds its workers spent building or loading the model, all attempts (rank 0's)."""
    checkpoint_path: str | None = None
    val_losses: list[float] = field(default_factory=list)
    searcher_value: float | None = None
    """What Optuna holds for this trial (it must be the best epoch's loss, not the last)."""
    probes: dict[str, float] = field(default_factory=dict)
    """The best checkpoint's generation probe scores (gpt4all_ray.train.probes), without the prefix."""
    start: str = ""
    """Where its configuration came from when tried before sampling: "enqueued", or "training log:
    <run>" for a warm start from GPT4All's log; "" when the searcher sampled it."""

    def meets(self, min_stop_rate: float) -> bool:
        return not min_stop_rate or self.probes.get("stop_rate", 0.0) >= min_stop_rate


@dataclass(frozen=True)
class BestTrial:
    """The trial the search picked (best.json holds the same)."""

    record: TrialRecord
    config: dict[str, Any] | None
    """Its full trial configuration (every fixed and sampled setting)."""
    checkpoint: Path
    """<experiment>/best: its best checkpoint's model in Hugging Face format."""
    min_stop_rate: float
    constraint_met: bool
    """Whether it meets tune.min_stop_rate (False: no trial did; it is the lowest loss overall)."""


def record_from_history(
    trial_id: str,
    params: dict[str, Any],
    history: list[dict[str, Any]],
    error: bool,
    stopped_by: StopReason | None = None,
) -> TrialRecord:
    """One trial's reported evaluations (in order) -> its leaderboard row. val_losses holds the
    epoch ends; the best may come from a step-level evaluation. The stop reason is the workers'
    own, else what the stop log says stopped it in the driver (stop_log.py), else STOPPED."""
    record = TrialRecord(trial_id, params)
    reported = evaluations(history)
    if reported:
        record.val_losses = [e.val_loss for e in reported if e.epoch_end]
        last = reported[-1]
        record.best_val_loss = last.best_val_loss
        record.best_epoch = last.best_epoch
        record.best_step = last.best_step
        record.epochs_run = last.epoch
        record.restarts = len({e.resumed_from_step for e in reported if e.resumed_from_step})
        record.stop_reason = last.stop_reason or stopped_by or StopReason.STOPPED
        record.wall_s = last.time_total_s
        record.setup_data_s = last.phase_seconds.get("setup_data")
        record.setup_model_s = last.phase_seconds.get("setup_model")
        record.probes = dict(last.probes)
        # The evaluation that set the best holds the exported model (a later tie does not).
        at_best = [e for e in reported if e.checkpoint_path and e.step == record.best_step]
        at_best = at_best or [e for e in reported if e.checkpoint_path and e.val_loss == record.best_val_loss]
        record.checkpoint_path = at_best[-1].checkpoint_path if at_best else None
    if error:
        record.stop_reason = StopReason.ERROR
    return record


def leaderboard_row(r: TrialRecord, param_names: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"trial_id": r.trial_id}
    row.update({p: r.params.get(p) for p in param_names})
    row.update(
        best_val_loss=r.best_val_loss,
        best_epoch=r.best_epoch,
        best_step=r.best_step,
        epochs_run=r.epochs_run,
        stop_reason=r.stop_reason.value,
        restarts=r.restarts,
        wall_s=round(r.wall_s, 1),
        setup_data_s=None if r.setup_data_s is None else round(r.setup_data_s, 1),
        setup_model_s=None if r.setup_model_s is None else round(r.setup_model_s, 1),
        searcher_value=r.searcher_value,
        stop_rate=r.probes.get("stop_rate"),
        exact_match=r.probes.get("exact_match"),
        repetition_rate=r.probes.get("repetition_rate"),
        mean_new_tokens=r.probes.get("mean_new_tokens"),
        val_losses=" ".join(repr(v) for v in r.val_losses),
        start=r.start,
    )
    return row


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    return sorted(records, key=lambda r: (not math.isfinite(r.best_val_loss), r.best_val_loss, r.trial_id))


def leaderboard_cell(v: Any, column: str = "") -> str:
    """A value as leaderboard.md shows it (the model card repeats the winner's row)."""
    if column == "val_losses":
        return " ".join(f"{float(x):.4f}" for x in v.split())
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)


def best_record(records: list[TrialRecord], min_stop_rate: float = 0.0) -> tuple[TrialRecord | None, bool]:
    """The lowest finite loss with a checkpoint among trials meeting the stop-rate constraint;
    when none meets it, the lowest overall. The flag says whether the constraint was met."""
    usable = [r for r in ranked(records) if r.checkpoint_path and math.isfinite(r.best_val_loss)]
    feasible = [r for r in usable if r.meets(min_stop_rate)]
    if feasible:
        return feasible[0], True
    return (usable[0] if usable else None), False


def write_report(
    exp_dir: Path,
    records: list[TrialRecord],
    param_names: list[str],
    trial_configs: dict[str, dict[str, Any]],
    min_stop_rate: float = 0.0,
    storage_root: str | None = None,
) -> BestTrial | None:
    """Write the leaderboard and, when some trial has a checkpoint, best.json and best/ (copied
    through the filesystem of storage_root, Ray's storage; local when None)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    rows = [leaderboard_row(r, param_names) for r in ranked(records)]
    columns = list(rows[0]) if rows else ["trial_id"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (exp_dir / "leaderboard.csv").write_text(buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(leaderboard_cell(row[c], c) for c in columns) + " |" for row in rows]
    (exp_dir / "leaderboard.md").write_text("\n".join(md) + "\n")

    best, constraint_met = best_record(records, min_stop_rate)
    best_dir = exp_dir / "best"
    if best_dir.exists():  # an earlier report's, this one rewrites or (no usable trial now) removes
        shutil.rmtree(best_dir)
    if best is None:
        (exp_dir / "best.json").unlink(missing_ok=True)
        return None
    # The model, not the resume state (optimizer moments are 2-3x the model's size).
    fetch_checkpoint(storage_root or str(exp_dir), best.checkpoint_path, best_dir, skip=RESUME_DIR)  # type: ignore[arg-type]
    summary = {
        "trial_id": best.trial_id,
        "params": best.params,
        "config": trial_configs.get(best.trial_id),
        "best_val_loss": best.best_val_loss,
        "best_epoch": best.best_epoch,
        "best_step": best.best_step,
        "epochs_run": best.epochs_run,
        "stop_reason": best.stop_reason.value,
        "probes": best.probes,
        "min_stop_rate": min_stop_rate,
        "constraint_met": constraint_met,
        "checkpoint_path": str(best_dir.resolve()),
        "trial_checkpoint_path": best.checkpoint_path,
    }
    (exp_dir / "best.json").write_text(json.dumps(summary, indent=2) + "\n")
    return BestTrial(best, trial_configs.get(best.trial_id), best_dir.resolve(), min_stop_rate, constraint_met)
