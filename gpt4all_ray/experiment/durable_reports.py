"""Every report of a trial's workers, written at once to the trial's folder in Ray's storage
(train/<trial_id>/reports/step-<n>.json, beside its checkpoints) before Tune hears of it.

Tune keeps its own copy in the trial's result.json, but stages it on the driver's machine and
uploads it now and then, and a trial restored by --resume starts a new result.json: a driver
killed in between would take the trial's earlier reports with it. These files survive it; the
stored experiment (files.py) merges them in by step. trial.py's callback writes them."""

from __future__ import annotations

import json
from typing import Any

from gpt4all_ray.evaluation import CHECKPOINT_PATH, Evaluation

REPORTS = "reports"


def save_report(run_dir: str, evaluation: Evaluation, checkpoint_path: str | None) -> None:
    """One evaluation as Ray carries it, with where Ray stored its checkpoint."""
    import pyarrow.fs

    record = evaluation.to_metrics() | ({CHECKPOINT_PATH: checkpoint_path} if checkpoint_path else {})
    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    fs.create_dir(f"{path}/{REPORTS}", recursive=True)
    with fs.open_output_stream(f"{path}/{REPORTS}/step-{evaluation.step:09d}.json") as f:
        f.write(json.dumps(record).encode())


def saved_reports(run_dir: str) -> list[dict[str, Any]]:
    """The trial's reports in step order; none if it never reported."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(f"{path}/{REPORTS}", allow_not_found=True))
    files = sorted(i.path for i in listing if i.type == pyarrow.fs.FileType.File and i.base_name.endswith(".json"))
    reports = []
    for name in files:
        with fs.open_input_stream(name) as f:
            reports.append(json.loads(f.read()))
    return reports
