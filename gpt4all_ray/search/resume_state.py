"""Bounded checkpoint storage: a trial that has ended keeps what can still be used, its exported
best model, and drops the state that only resumes it (DeepSpeed engine, optimizer, RNG).

For a full GPT-J-6B fine-tune a checkpoint is ~12 GB of bf16 weights plus ~85 GB of resume state,
and Ray keeps the best and the latest of each trial: kept, an 8-trial search holds 1.5 TB when it
ends. A trial that failed keeps everything: `--resume` restarts it from its last checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from gpt4all_ray.experiment.storage import drop_resume_state


def resume_state_callback(train_root: str) -> Any:
    """A Tune callback dropping each trial's resume state when it completes or is stopped (by a
    stopper or ASHA); `train_root` holds the trials' Ray Train runs, one folder per trial id."""
    from ray.tune import Callback

    class DropResumeState(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            drop_for([trial.trial_id], train_root)

    return DropResumeState()


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
