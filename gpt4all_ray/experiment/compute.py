"""What a search's trials spent: trial-epochs and worker-hours, where their wall time went, and
what stopping early saved."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt4all_ray.evaluation import Evaluation, evaluations
from gpt4all_ray.experiment.files import StoredTrial
from gpt4all_ray.experiment.records import TrialRecord

# The workers' timed phases (evaluation.PHASES) in the groups the summary and
# benchmarks/worker_overhead.py show; what no phase holds (Tune starting the trial, its end, the
# last checkpoint and report) is the rest of its wall time.
PHASE_GROUPS = {
    "train": ("train",),
    "worker_group": ("worker_group",),
    "setup": ("setup_libraries", "setup_data", "setup_model", "setup_engine"),
    "evaluate": ("evaluate", "probes"),
    "checkpoint_report": ("checkpoint", "report", "resume"),
}
TIMED = tuple(phase for phases in PHASE_GROUPS.values() for phase in phases)
REST = "rest"
LABELS = {
    "train": "training steps",
    "worker_group": "starting the trial's workers (Ray Train's worker group, imports)",
    "setup": "setup: libraries, data, tokenizer, model, DeepSpeed engine",
    "evaluate": "evaluation and generation probes",
    "checkpoint_report": "checkpoints and reports",
    REST: "the rest: Tune starting and ending the trial, its last checkpoint, logging",
}
PER_EPOCH = ("train", "evaluate", "probes", "checkpoint", "report")
"""Phases that scale with the epochs a trial runs (setup and the start do not)."""


@dataclass
class Compute:
    trial_epochs_run: float
    trial_epochs_requested: float
    worker_hours_used: float
    worker_hours_saved: float
    worker_hours_by_phase: dict[str, float] = field(default_factory=dict)
    """Worker-hours in each PHASE_GROUPS entry and REST, over the trials whose workers timed their
    phases (empty where none did: experiments from before they did)."""


def phase_seconds(last: Evaluation) -> dict[str, float] | None:
    """A trial's seconds by phase from its last report, or None where its workers did not time
    them. Checkpoint and report seconds lack the last evaluation's (not over when it was sent)."""
    if not last.timed_phases:
        return None
    return {phase: last.phase_seconds.get(phase, 0.0) for phase in TIMED if phase != "train"} | {"train": last.train_s}


def grouped_seconds(phases: dict[str, float]) -> dict[str, float]:
    """phase_seconds() summed into PHASE_GROUPS."""
    return {group: sum(phases[p] for p in parts) for group, parts in PHASE_GROUPS.items()}


def compute_used(trials: list[StoredTrial], records: list[TrialRecord]) -> Compute:
    """Run: epochs (as step progress) each trial trained. Saved: the epochs a stopped trial asked
    for but did not run, each at what an epoch cost it (steps, evaluation, checkpoint, report;
    the trial's start and setup are paid whether it stops or not), times its workers."""
    run = requested = used = saved = 0.0
    by_phase: dict[str, float] = {}
    for trial, record in zip(trials, records, strict=True):
        last = evaluations(trial.history)
        done = (last[-1].epoch_progress or float(last[-1].epoch)) if last else 0.0
        asked = float((trial.config or {}).get("epochs", trial.params.get("epochs", done)))
        workers = float((trial.resources or {}).get("workers_per_trial", 1))
        run, requested = run + done, requested + asked
        used += record.wall_s * workers / 3600
        phases = phase_seconds(last[-1]) if last else None
        if phases is not None:
            grouped = grouped_seconds(phases)
            grouped[REST] = max(record.wall_s - sum(grouped.values()), 0.0)
            for name, seconds in grouped.items():
                by_phase[name] = by_phase.get(name, 0.0) + seconds * workers / 3600
        if record.stop_reason.stopped_early and done > 0:
            # Without timed phases (older experiments) the whole wall time, start included.
            spent = sum(phases[p] for p in PER_EPOCH) if phases is not None else record.wall_s
            saved += (asked - done) * (spent / done) * workers / 3600
    return Compute(run, requested, used, saved, by_phase)
