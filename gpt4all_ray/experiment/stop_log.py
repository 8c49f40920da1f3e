"""Who stopped a trial the workers did not stop themselves: ASHA, the divergence stopper or the
GPU-hour budget decide in the Tune driver, and Tune's results do not say which. Each decision is
appended to the experiment's stops.jsonl by the object that made it (they are pickled with the
experiment state, so a resumed search keeps writing to the same file); the progress lines and the
leaderboard read it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt4all_ray.evaluation import StopReason

STOPS_FILE = "stops.jsonl"
EVERY_TRIAL = "*"
"""A decision for the whole search (the GPU-hour budget): every trial it stopped, it stopped."""

DESCRIPTIONS = {
    StopReason.ASHA: "ASHA (not in the best 1/{reduction_factor} of the trials at this rung)",
    StopReason.DIVERGED: "the divergence stopper (validation loss rose above its best)",
    StopReason.NON_FINITE: "the divergence stopper (validation loss NaN or inf)",
    StopReason.GPU_HOURS: "the GPU-hour budget (tune.gpu_hours spent)",
}


def record_stop(exp_dir: str | Path | None, trial_id: str, by: StopReason, **detail: Any) -> None:
    """Append one decision; a search without an experiment folder (unit tests) records nothing."""
    if not exp_dir:
        return
    with (Path(exp_dir) / STOPS_FILE).open("a") as f:
        f.write(json.dumps({"trial_id": trial_id, "by": by.value, **detail}) + "\n")


def read_stops(exp_dir: Path) -> dict[str, StopReason]:
    """trial id (or EVERY_TRIAL) -> what stopped it; the first decision per trial counts."""
    path = exp_dir / STOPS_FILE
    stops: dict[str, StopReason] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                stops.setdefault(entry["trial_id"], StopReason(entry["by"]))
    return stops


def stopped_by(stops: dict[str, StopReason], trial_id: str) -> StopReason | None:
    return stops.get(trial_id) or stops.get(EVERY_TRIAL)
