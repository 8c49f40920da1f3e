"""What the user sees while a search runs: one line per trial start and per epoch, with each
stop decision, as it happens."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from gpt4all_ray.config import SearchSpec
from gpt4all_ray.evaluation import Evaluation, StopReason
from gpt4all_ray.experiment.stop_log import DESCRIPTIONS, read_stops, stopped_by


def clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60:02d}:{s % 60:02d}"


def short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


OOM_HINT = "; lower per_device_batch (keeping global_batch), or turn on gradient_checkpointing, ZeRO-3 or offload"


def failure_line(error_file: str | None) -> str:
    """The error's last line (the exception), and what to change when it is out of memory."""
    text = ""
    if error_file:
        with contextlib.suppress(OSError):
            text = Path(error_file).read_text()
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    hint = OOM_HINT if "OutOfMemoryError" in text or "out of memory" in text else ""
    return f"{last[-300:] or 'see Ray logs'}{hint} ({error_file or 'no error file'})"


def stopper_description(spec: SearchSpec, by: StopReason | None) -> str:
    """Who stopped a trial, for the progress line; "Tune" where the stop log has no entry (Tune's
    own time budget, or a search stopped by hand)."""
    return DESCRIPTIONS[by].format(reduction_factor=spec.tune.asha_reduction_factor) if by in DESCRIPTIONS else "Tune"


WORKER_STOPS = {
    StopReason.DIVERGED: "validation loss rose above its best; best checkpoint kept",
    StopReason.NON_FINITE: "loss or gradients are NaN/inf",
}


def evaluation_line(trial_id: str, e: Evaluation, epochs: int) -> str:
    """One evaluation as the user sees it while the search runs."""
    where = f"epoch {e.epoch}/{epochs}" + ("" if e.epoch_end else f" step {e.step}")
    line = (
        f"trial {trial_id} {where}: val_loss {e.val_loss:.4f} (best {e.best_val_loss:.4f} at epoch "
        f"{e.best_epoch}), train_loss {e.train_loss:.4f}, {e.epoch_s:.1f} s"
    )
    if e.mfu is not None:
        line += f", MFU {e.mfu:.1%}"
    if e.skipped_steps:
        line += f", {e.skipped_steps} steps skipped (non-finite gradients)"
    if e.stop_reason in WORKER_STOPS:
        line += f" -> stopped: {WORKER_STOPS[e.stop_reason]}"
    return line


def progress_callback(spec: SearchSpec, t0: float, exp_dir: Path | None = None) -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        """One line per trial start, epoch and end, as they happen."""

        def __init__(self) -> None:
            self.params: dict[str, dict[str, Any]] = {}
            self.errors: set[str] = set()

        def epochs(self, trial_id: str) -> int:
            """The epochs the trial asked for (sampled, or the space's fixed value)."""
            return spec.trial_config(self.params.get(trial_id, {})).epochs

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.params[trial.trial_id] = {k: trial.config[k] for k in spec.search}
            print(f"[{clock(t0)}] trial {trial.trial_id} started: {short(self.params[trial.trial_id])}", flush=True)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            evaluation = Evaluation.from_result(result)
            if evaluation is not None:
                print(
                    f"[{clock(t0)}] {evaluation_line(trial.trial_id, evaluation, self.epochs(trial.trial_id))}",
                    flush=True,
                )

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = Evaluation.from_result(trial.last_result or {})
            epochs = self.epochs(trial.trial_id)
            if last is None or last.stop_reason or last.epoch_progress >= epochs:
                return  # ran its epochs, or the worker already said why it stopped
            by = stopper_description(spec, stopped_by(read_stops(exp_dir), trial.trial_id) if exp_dir else None)
            print(
                f"[{clock(t0)}] trial {trial.trial_id} stopped at epoch {last.epoch}/{epochs} by {by}; "
                f"best {last.best_val_loss:.4f} kept",
                flush=True,
            )

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.errors.add(trial.trial_id)
            print(f"[{clock(t0)}] trial {trial.trial_id} FAILED: {failure_line(trial.error_file)}", flush=True)

    return Progress()
