"""Compute a search used, where its trials' wall time went, and what stopping early saved."""

from __future__ import annotations

from typing import Any

import pytest

from gpt4all_ray.evaluation import evaluations
from gpt4all_ray.experiment import compute as groups
from gpt4all_ray.experiment.compute import PHASE_GROUPS, TIMED, compute_used, phase_seconds
from gpt4all_ray.experiment.files import StoredTrial
from gpt4all_ray.experiment.records import record_from_history
from gpt4all_ray.experiment.report import time_by_phase_lines

# One epoch of a timed trial: 10 s of steps, 2 s evaluating, 1 s checkpoint and report; once a
# trial: 6 s of setup and 12 s for Ray Train to start its workers.
PER_EPOCH = {"train_s": 10.0, "evaluate_s": 2.0, "probes_s": 0.0, "checkpoint_s": 0.5, "report_s": 0.5}
ONCE = {"setup_libraries_s": 3.0, "setup_data_s": 1.0, "setup_model_s": 1.0, "setup_engine_s": 1.0}
ONCE |= {"worker_group_s": 12.0}  # from TorchTrainer.fit() to the workers' loop
REST = 8.0  # what no phase holds: Tune starting and ending the trial


def trial(trial_id: str, epochs_asked: int, epochs_run: int, reason: str, timed: bool = True) -> StoredTrial:
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs_run + 1):
        phases = {k: v * epoch for k, v in PER_EPOCH.items()} | ONCE | {"resume_s": 0.0} if timed else {}
        wall = REST + sum(phases.values()) if timed else 40.0 * epoch
        last = epoch == epochs_run
        history.append(
            {"epoch": epoch, "step": epoch, "val_loss": 3.0, "best_val_loss": 3.0, "best_epoch": 1}
            | {"time_total_s": wall, "stop_reason": reason if last else ""}
            | phases
        )
    return StoredTrial(trial_id, 1, {"epochs": epochs_asked}, history, False, None, {"workers_per_trial": 2})


def used(trials: list[StoredTrial]) -> Any:
    records = [record_from_history(t.trial_id, t.params, t.history, t.error) for t in trials]
    return compute_used(trials, records)


def test_the_summary_groups_every_phase_the_workers_time() -> None:
    from gpt4all_ray.evaluation import PHASES

    assert set(TIMED) == {"train", *PHASES} and len(TIMED) == len(PHASES) + 1
    # Evaluation.from_result reads probe_* keys as the generation probes' scores.
    assert not any(f"{phase}_s".startswith("probe_") for phase in PHASES)


def test_wall_time_splits_into_phases_and_the_rest() -> None:
    compute = used([trial("a", 2, 2, "completed")])
    hours = {name: h * 3600 / 2 for name, h in compute.worker_hours_by_phase.items()}  # per worker, seconds
    assert hours["train"] == pytest.approx(20.0)
    assert hours["setup"] == pytest.approx(6.0)
    assert hours["evaluate"] == pytest.approx(4.0)
    assert hours["checkpoint_report"] == pytest.approx(2.0)
    assert hours["worker_group"] == pytest.approx(12.0)
    assert hours[groups.REST] == pytest.approx(REST)
    assert sum(compute.worker_hours_by_phase.values()) == pytest.approx(compute.worker_hours_used)
    assert list(compute.worker_hours_by_phase) == [*PHASE_GROUPS, groups.REST]
    # The summary names each group.
    table = "\n".join(time_by_phase_lines(compute))
    assert all(f"| {groups.LABELS[group]} |" in table for group in compute.worker_hours_by_phase)


def test_a_stopped_trial_saves_its_epochs_at_their_own_cost_not_its_start() -> None:
    compute = used([trial("a", 4, 1, "asha")])
    epoch_s = sum(PER_EPOCH.values())  # 13 s; the trial's wall time per epoch run is 39 s
    assert compute.worker_hours_saved == pytest.approx(3 * epoch_s * 2 / 3600)
    assert (compute.trial_epochs_run, compute.trial_epochs_requested) == (1.0, 4.0)


def test_a_completed_trial_saves_nothing() -> None:
    assert used([trial("a", 3, 3, "completed")]).worker_hours_saved == 0.0


def test_trials_whose_workers_did_not_time_phases_fall_back_to_wall_time() -> None:
    old = trial("old", 4, 1, "diverged", timed=False)
    assert phase_seconds(evaluations(old.history)[-1]) is None
    compute = used([old])
    assert compute.worker_hours_by_phase == {} and time_by_phase_lines(compute) == []
    assert compute.worker_hours_saved == pytest.approx(3 * 40.0 * 2 / 3600)


def test_the_summary_table_shares_add_up() -> None:
    compute = used([trial("a", 2, 2, "completed"), trial("b", 4, 1, "asha")])
    lines = time_by_phase_lines(compute)
    rows = [line for line in lines if line.startswith("| ") and "%" in line]
    assert len(rows) == len(PHASE_GROUPS) + 1
    shares = [int(row.rsplit("|", 2)[1].strip().rstrip("%")) for row in rows]
    assert 99 <= sum(shares) <= 101  # each share rounded to a percent


def test_shares_count_only_the_trials_that_timed_their_phases() -> None:
    # An experiment resumed across an upgrade: one trial from before the workers timed phases.
    mixed = used([trial("a", 2, 2, "completed"), trial("old", 2, 2, "completed", timed=False)])
    timed_alone = used([trial("a", 2, 2, "completed")])
    assert mixed.worker_hours_by_phase == timed_alone.worker_hours_by_phase
    assert time_by_phase_lines(mixed) == time_by_phase_lines(timed_alone)
    assert mixed.worker_hours_used > sum(mixed.worker_hours_by_phase.values())
