"""Bounded checkpoint storage: a trial that has ended keeps what can still be used, its exported
best model, and drops the state that only resumes it (DeepSpeed engine, optimizer, RNG).

For a full GPT-J-6B fine-tune a checkpoint is ~12 GB of bf16 weights plus ~85 GB of resume state,
and Ray keeps the best and the latest of each trial: kept, an 8-trial search holds 1.5 TB when it
ends. A trial is dropped from once Tune has *saved* it as ended: a driver killed before that
leaves it running in the saved state, and --resume restarts it from its checkpoint. A trial that
failed keeps everything, for --resume.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from gpt4all_ray.experiment.storage import drop_resume_state, human_bytes
from gpt4all_ray.ray_private import saved_as_ended

CHECK_EVERY_S = 30.0  # Tune saves its experiment state every ~10 s or more; a listing is cheap


def resume_state_callback(root: str) -> Any:
    """A Tune callback that, every CHECK_EVERY_S and at the end, drops the resume state of the
    trials Tune has saved as ended. `root` holds Ray's tune/ and train/ (a path or a URI)."""
    from ray.tune import Callback

    class DropResumeState(Callback):
        def __init__(self) -> None:
            self.dropped: set[str] = set()
            self.checked_at = 0.0

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.checked_at >= CHECK_EVERY_S:
                self.checked_at = time.monotonic()
                self.dropped |= drop_ended(root, skip=self.dropped)

    return DropResumeState()


def drop_ended(root: str, skip: Iterable[str] = ()) -> set[str]:
    """Drop the resume state of every trial Tune has saved as ended (but those in `skip`); the
    trials it went through. A failure to delete is reported and left: storage is not worth failing
    a search for."""
    try:
        ended = saved_as_ended(f"{root}/tune") - set(skip)
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable, or Tune changed its format
        print(f"warning: Tune's saved experiment state unreadable, no resume state dropped: {err!r}", file=sys.stderr)
        return set()
    for trial_id in sorted(ended):
        try:
            if freed := drop_resume_state(f"{root}/train/{trial_id}"):
                print(
                    f"trial {trial_id} ended: dropped its resume state ({human_bytes(freed)}), kept its model",
                    flush=True,
                )
        except OSError as err:
            print(f"warning: could not drop trial {trial_id}'s resume state: {err}", file=sys.stderr, flush=True)
    return ended
