"""Every report of a trial's workers, written at once to the trial's folder in Ray's storage
(train/<trial_id>/reports/step-<n>.json, beside its checkpoints) before Tune hears of it.

Tune keeps its own copy in the trial's result.json, but stages it on the driver's machine and
uploads it now and then, and a trial restored by --resume starts a new result.json: a driver
killed in between would take the trial's earlier reports with it. These files survive it; the
stored experiment (files.py) merges them in by step. trial.py's callback writes them, and beside
them one file per failure of the trial's workers (restarts/<unix ns>.json: the cause, the budget it
is charged to, whether Ray Train restarted them)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from gpt4all_ray.evaluation import CHECKPOINT_PATH, Evaluation

REPORTS = "reports"
RESTARTS = "restarts"


class RestartCause(str, Enum):
    PREEMPTION = "preemption"
    """A worker died with a node drained for preemption (a spot reclaim, a pod deleted): charged
    to tune.preemption_restarts."""
    FAILURE = "failure"
    """Anything else (out of memory, a bug, a node lost without notice): charged to
    tune.worker_restarts."""


@dataclass(frozen=True)
class Restart:
    """One failure of a trial's workers that its Ray Train controller decided on."""

    at: float
    """Unix time of the decision."""
    cause: RestartCause
    ranks: tuple[int, ...]
    """The ranks that failed (the preempted ones, for a preemption Ray Train waited out)."""
    error: str
    """The first failed rank's error, its first line."""
    restarted: bool = True
    """False: the budget it is charged to was spent, and the trial ended in error."""

    @classmethod
    def of(cls, ranks: list[int], error: str, preempted: bool, restarted: bool) -> Restart:
        lines = error.strip().splitlines()
        cause = RestartCause.PREEMPTION if preempted else RestartCause.FAILURE
        return cls(time.time(), cause, tuple(ranks), lines[0] if lines else "", restarted)


def save_report(run_dir: str, evaluation: Evaluation, checkpoint_path: str | None) -> None:
    """One evaluation as Ray carries it, with where Ray stored its checkpoint."""
    record = evaluation.to_metrics() | ({CHECKPOINT_PATH: checkpoint_path} if checkpoint_path else {})
    _store_record(run_dir, f"{REPORTS}/step-{evaluation.step:09d}.json", record)


def _store_record(run_dir: str, name: str, record: dict[str, Any]) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    fs.create_dir(f"{path}/{name.rpartition('/')[0]}", recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as f:
        f.write(json.dumps(record).encode())


def saved_reports(run_dir: str) -> list[dict[str, Any]]:
    """The trial's reports in step order; none if it never reported."""
    return _stored_records(run_dir, REPORTS)


def _stored_records(run_dir: str, folder: str) -> list[dict[str, Any]]:
    """Every <run_dir>/<folder>/*.json, in the order of their names."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(f"{path}/{folder}", allow_not_found=True))
    files = sorted(i.path for i in listing if i.type == pyarrow.fs.FileType.File and i.base_name.endswith(".json"))
    records = []
    for name in files:
        with fs.open_input_stream(name) as f:
            records.append(json.loads(f.read()))
    return records


def save_restart(run_dir: str, restart: Restart) -> None:
    _store_record(run_dir, f"{RESTARTS}/{time.time_ns()}.json", asdict(restart))  # one file each, never overwritten


def saved_restarts(run_dir: str) -> list[Restart]:
    """The trial's restarts in time order; none if its workers never failed."""
    restarts = []
    for raw in _stored_records(run_dir, RESTARTS):
        raw["cause"], raw["ranks"] = RestartCause(raw["cause"]), tuple(raw["ranks"])
        restarts.append(Restart(**raw))
    return sorted(restarts, key=lambda r: r.at)
