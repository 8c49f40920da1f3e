"""The driver fault of faults.py (GPT4ALL_RAY_FAULT="driver:results=N" or "driver:trials=N") as a
Tune callback: the driver SIGKILLs itself and its process group right after Tune processed the
N-th trial result, or completed the N-th trial: at the end of that step of Tune's loop, when its
own loggers have written the result, as a crash between two events would find them. Only an
experiment started with a driver fault set gets the callback."""

from __future__ import annotations

from typing import Any

from gpt4all_ray.train import faults


def driver_fault_callbacks() -> list[Any]:
    """[the callback] when GPT4ALL_RAY_FAULT names a driver fault, else []: a normal search runs
    without it."""
    if faults.driver_fault() is None:
        return []
    from ray.tune import Callback

    class DriverFault(Callback):
        """Counts the trial results this driver received and the experiment's completed trials.
        It is pickled with the Tuner and comes back on --resume, where it reads the variable as it
        is then: each resume of one experiment can be killed at a point of its own, or not at all."""

        def __init__(self) -> None:
            self.results = 0
            self.due: tuple[str, int] | None = None

        def _saw(self, event: str, count: int) -> None:
            if faults.driver_fault() == (event, count):
                self.due = (event, count)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            # Tune's loggers run after the user's callbacks: killing in on_trial_result would
            # lose the result from result.json, which a crash just after it does not.
            if self.due is not None:
                faults.kill_driver(*self.due)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.results += 1
            self._saw("results", self.results)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            # The experiment's completed trials, those a --resume restored included (this one is
            # still RUNNING here).
            done = {t.trial_id for t in trials if t.status == "TERMINATED"} | {trial.trial_id}
            self._saw("trials", len(done))

    return [DriverFault()]
