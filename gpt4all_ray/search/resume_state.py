"""Bounded checkpoint storage: a trial that has ended keeps what can still be used, its exported
best model, and drops the state that only resumes it (DeepSpeed engine, optimizer, RNG).

For a full GPT-J-6B fine-tune a checkpoint is ~12 GB of bf16 weights plus ~85 GB of resume state,
and Ray keeps the best and the latest of each trial: kept, an 8-trial search holds 1.5 TB when it
ends. A trial that failed keeps everything: `--resume` restarts it from its last checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpt4all_ray.experiment.storage import drop_resume_state


def resume_state_callback(train_root: str, ended: Path) -> Any:
    """A Tune callback dropping each trial's resume state when it completes or is stopped (by a
    stopper or ASHA), and listing the trial in `ended`; `train_root` holds the trials' Ray Train
    runs, one folder per trial id. A trial Tune only paused (the driver was interrupted) is not
    listed: --resume continues it from its checkpoint."""
    from ray.tune import Callback

    class DropResumeState(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            with ended.open("a") as f:
                f.write(trial.trial_id + "\n")
            drop_for([trial.trial_id], train_root)

    return DropResumeState()


def ended_trials(ended: Path) -> list[str]:
    """The trials the callback saw end, in this run of the experiment and the ones before."""
    return ended.read_text().split() if ended.is_file() else []


def drop_for(trial_ids: Iterable[str], train_root: str) -> int:
    """Drop the resume state of these trials' checkpoints; the bytes freed. A failure to delete is
    reported and left: storage is not worth failing a finished search for."""
    freed = 0
    for trial_id in trial_ids:
        try:
            freed += drop_resume_state(f"{train_root.rstrip('/')}/{trial_id}")
        except OSError as err:
            print(f"warning: could not drop trial {trial_id}'s resume state: {err}", file=sys.stderr, flush=True)
    return freed
