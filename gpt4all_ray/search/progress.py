"""What the user sees while a search runs: one line per trial start and per epoch, with each
stop decision, as it happens. The callback also keeps each trial's reported epochs for the report."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from gpt4all_ray.config import SearchSpec
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


def stopper_description(spec: SearchSpec, by: str | None) -> str:
    """Who stopped a trial, for the progress line; "Tune" where the stop log has no entry (Tune's
    own time budget, or a search stopped by hand)."""
    return DESCRIPTIONS[by].format(reduction_factor=spec.tune.asha_reduction_factor) if by in DESCRIPTIONS else "Tune"


def progress_callback(spec: SearchSpec, t0: float, exp_dir: Path | None = None) -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        """One line per trial start, epoch and end, as they happen."""

        def __init__(self) -> None:
            self.history: dict[str, list[dict[str, Any]]] = defaultdict(list)
            self.params: dict[str, dict[str, Any]] = {}
            self.errors: set[str] = set()

        def epochs(self, trial_id: str) -> int:
            """The epochs the trial asked for (sampled, or the space's fixed value)."""
            return spec.trial_config(self.params.get(trial_id, {})).epochs

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.params[trial.trial_id] = {k: trial.config[k] for k in spec.search}
            print(f"[{clock(t0)}] trial {trial.trial_id} started: {short(self.params[trial.trial_id])}", flush=True)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "val_loss" not in result:
                return
            self.history[trial.trial_id].append({k: v for k, v in result.items() if k != "config"})
            epochs = self.epochs(trial.trial_id)
            where = f"epoch {result['epoch']}/{epochs}"
            if not result.get("epoch_end", True):
                where += f" step {result['step']}"
            line = (
                f"[{clock(t0)}] trial {trial.trial_id} {where}: "
                f"val_loss {result['val_loss']:.4f} (best {result['best_val_loss']:.4f} at epoch "
                f"{result['best_epoch']}), train_loss {result['train_loss']:.4f}, {result['epoch_s']:.1f} s"
            )
            if "mfu" in result:
                line += f", MFU {result['mfu']:.1%}"
            if result.get("skipped_steps"):
                line += f", {result['skipped_steps']} steps skipped (non-finite gradients)"
            reason = result.get("stop_reason")
            if reason == "diverged":
                line += " -> stopped: validation loss rose above its best; best checkpoint kept"
            elif reason == "non_finite":
                line += " -> stopped: loss or gradients are NaN/inf"
            print(line, flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = trial.last_result or {}
            epochs = self.epochs(trial.trial_id)
            if "val_loss" not in last or last.get("stop_reason") or last.get("epoch_progress", 0) >= epochs:
                return  # ran its epochs, or the worker already said why it stopped
            by = stopper_description(spec, stopped_by(read_stops(exp_dir), trial.trial_id) if exp_dir else None)
            print(
                f"[{clock(t0)}] trial {trial.trial_id} stopped at epoch {last['epoch']}/{epochs} by {by}; "
                f"best {last['best_val_loss']:.4f} kept",
                flush=True,
            )

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.errors.add(trial.trial_id)
            print(f"[{clock(t0)}] trial {trial.trial_id} FAILED: {failure_line(trial.error_file)}", flush=True)

    return Progress()
