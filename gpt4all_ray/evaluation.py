"""The one contract between a trial's workers and everything that reads what they report: the
`Evaluation` a worker sends at each evaluation (epoch end, or every eval_every_steps), and the
`StopReason` a trial ends with. Ray carries it as a flat dict (Tune's metrics, result.json, the
durable reports); `to_metrics()` writes that dict and `Evaluation.from_result()` reads it back,
so no other module spells a metric's key. Pure Python: imported by workers, driver and report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any


class StopReason(str, Enum):
    """Why a trial ended (or "" while it runs). The values are what leaderboards and Optuna's
    user attributes hold."""

    RUNNING = ""
    COMPLETED = "completed"
    """Ran all its epochs."""
    DIVERGED = "diverged"
    """Validation loss rose above its best after the grace epochs (divergence.py)."""
    NON_FINITE = "non_finite"
    """Loss or gradients NaN/inf: every step since the last evaluation was skipped, or the
    validation loss was not finite."""
    ASHA = "asha"
    """Not in ASHA's top 1/reduction_factor at a rung (decided in the driver)."""
    GPU_HOURS = "gpu_hours"
    """The search's GPU-hour budget was spent (decided in the driver)."""
    STOPPED = "stopped"
    """Tune stopped it with no recorded decision (its time budget, or a search stopped by hand)."""
    ERROR = "error"
    """Its workers failed past their restart budget."""
    NO_RESULT = "no_result"
    """It never reported an evaluation."""

    def __str__(self) -> str:
        return self.value

    @property
    def stopped_early(self) -> bool:
        """Ended before the epochs it asked for, by a decision (not an error)."""
        return self in (
            StopReason.DIVERGED,
            StopReason.NON_FINITE,
            StopReason.STOPPED,
            StopReason.ASHA,
            StopReason.GPU_HOURS,
        )


PHASES = (
    "worker_group",  # from the trial's TorchTrainer.fit() to the loop: Ray Train's workers, imports
    "setup_libraries",  # DeepSpeed's and transformers' imports, the process group
    "setup_data",  # rows, tokenizer, encoding
    "setup_model",
    "setup_engine",  # deepspeed.initialize
    "resume",  # loading a checkpoint, after a restart
    "evaluate",
    "probes",  # generation probes
    "checkpoint",  # writing it
    "report",  # handing metrics and checkpoint over (Ray Train persists the checkpoint then)
)
"""The phases of a trial outside optimizer steps, each timed on every rank (reported as <phase>_s)."""

PROBE_PREFIX = "probe_"
PHASE_SUFFIX = "_s"


@dataclass(frozen=True)
class Evaluation:
    """What every rank reports at one evaluation (rank 0's copy is the one Tune keeps)."""

    epoch: int
    """The epoch being trained (1-based)."""
    val_loss: float
    """Token-weighted validation loss over all workers' shards."""
    best_val_loss: float
    """The lowest val_loss so far: what the search minimises (the kept checkpoint's loss)."""
    best_epoch: int
    """The epoch of best_val_loss."""
    step: int = 0
    """Optimizer steps done (global, over all epochs)."""
    epoch_end: bool = True
    """At an epoch's end (False: a step-level evaluation, fixed.eval_every_steps)."""
    epoch_progress: float = 0.0
    """Steps done / steps per epoch (1.0 at the end of epoch 1): the time axis of ASHA and the
    divergence rule."""
    best_step: int = 0
    """The step of best_val_loss."""
    checkpoint_score: float = 0.0
    """What Ray ranks checkpoints by to keep the best: val_loss where it improved (only then does
    the checkpoint hold the exported model), else the largest finite float."""
    train_loss: float = math.nan
    """The epoch's token-weighted training loss so far."""
    lr: float = 0.0
    epoch_s: float = 0.0
    """Seconds since the epoch (or this attempt) started."""
    stop_reason: StopReason = StopReason.RUNNING
    """The workers' own decision at this evaluation: RUNNING, COMPLETED, DIVERGED or NON_FINITE."""
    resumed_from_step: int = 0
    """The checkpoint's step when this attempt resumed a killed one (0: a first attempt)."""
    resume_fallbacks: int = 0
    """Newer checkpoints passed over as broken when it resumed."""
    skipped_steps: int = 0
    """Optimizer steps refused for non-finite loss or gradients."""
    train_s: float = 0.0
    """Seconds in optimizer steps, all attempts."""
    first_step_at: float | None = None
    """Unix time this attempt's first optimizer step ended."""
    worker_started_at: float = 0.0
    """Unix time this attempt's worker started the loop."""
    truncated_rows: int = 0
    dropped_too_long_rows: int = 0
    duplicate_rows: int = 0
    tokens_per_s: float | None = None
    """Over the log window that closed at this evaluation, all workers."""
    grad_norm: float | None = None
    mfu: float | None = None
    """Model FLOPs utilisation (None on CPU, where no peak is known)."""
    loss_scale: float | None = None
    """fp16's dynamic loss scale."""
    val_ppl: float | None = None
    """exp(val_loss), left out where it would overflow (Tune's logger warns at inf)."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds in each of PHASES, all attempts (checkpoint and report lack this evaluation's)."""
    probes: dict[str, float] = field(default_factory=dict)
    """The best checkpoint's generation probe scores (train/probes.py), finite ones only."""
    node_id: str = ""
    """The Ray node this rank ran on (each rank reports its own; "" outside Ray)."""
    # Set on the driver's side, read back with the rest:
    worker_nodes: list[str] = field(default_factory=list)
    """Every rank's node_id, in rank order (the report bridge gathers them from all ranks)."""
    time_total_s: float = 0.0
    """Tune's: the trial's wall seconds when Tune received this report."""
    checkpoint_path: str | None = None
    """Where Ray stored this evaluation's checkpoint (Tune's report bridge adds it)."""

    def to_metrics(self) -> dict[str, Any]:
        """The flat dict Ray carries: one key per field, phases as <phase>_s, probes as probe_<name>;
        None values, no worker_nodes and the driver-side time and checkpoint path left out."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("phase_seconds", "probes", "time_total_s", "checkpoint_path") or value is None:
                continue
            if f.name == WORKER_NODES:
                # One string: Tune's TensorBoard logger skips strings, and warns at lists of them.
                if value:
                    flat[f.name] = ",".join(value)
                continue
            flat[f.name] = value.value if isinstance(value, StopReason) else value
        flat |= {f"{phase}{PHASE_SUFFIX}": seconds for phase, seconds in self.phase_seconds.items()}
        flat |= {f"{PROBE_PREFIX}{name}": score for name, score in self.probes.items()}
        return flat

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Evaluation | None:
        """An evaluation from a reported dict (Tune's result, a result.json line, a durable report);
        None for a result that is not an evaluation (Tune's own, without val_loss)."""
        if VAL_LOSS not in result:
            return None
        missing = [name for name in REQUIRED if name not in result]
        if missing:
            raise ValueError(f"a reported evaluation lacks {', '.join(missing)}: {sorted(result)}")
        known = {f.name for f in fields(cls)} - {"phase_seconds", "probes"}
        values = {name: result[name] for name in known if name in result and result[name] is not None}
        if "stop_reason" in values:
            values["stop_reason"] = StopReason(values["stop_reason"] or "")
        if isinstance(values.get(WORKER_NODES), str):
            values[WORKER_NODES] = values[WORKER_NODES].split(",")
        phases = {p: float(result[f"{p}{PHASE_SUFFIX}"]) for p in PHASES if f"{p}{PHASE_SUFFIX}" in result}
        probes = {
            k.removeprefix(PROBE_PREFIX): float(v)
            for k, v in result.items()
            if k.startswith(PROBE_PREFIX) and isinstance(v, int | float) and not isinstance(v, bool)
        }
        return cls(**values, phase_seconds=phases, probes=probes)

    @property
    def timed_phases(self) -> bool:
        """Whether the workers timed their phases (experiments from before they did have none)."""
        return "evaluate" in self.phase_seconds


REQUIRED = ("epoch", "val_loss", "best_val_loss", "best_epoch")
VAL_LOSS = "val_loss"

# The keys Ray itself is told to read (a search metric, a time axis, a checkpoint score): named
# here, beside the fields they name, and checked against them below.
SEARCH_METRIC = "best_val_loss"
"""The running best: Ray's OptunaSearch tells Optuna the last reported value, which must be the
trial's best, not its last epoch's."""
TIME_AXIS = "epoch_progress"
CHECKPOINT_SCORE = "checkpoint_score"
TUNE_TIME = "time_total_s"
CHECKPOINT_PATH = "checkpoint_path"
WORKER_NODES = "worker_nodes"
_FIELDS = {f.name for f in fields(Evaluation)}
_NAMED = {VAL_LOSS, SEARCH_METRIC, TIME_AXIS, CHECKPOINT_SCORE, TUNE_TIME, CHECKPOINT_PATH, WORKER_NODES}
assert {*_NAMED, *REQUIRED} <= _FIELDS


def evaluations(history: list[dict[str, Any]]) -> list[Evaluation]:
    """A trial's reported evaluations in step order, each step once: a trial resumed after its
    driver was killed can report a step again, and the last report wins."""
    by_step: dict[int, Evaluation] = {}
    for index, result in enumerate(history):
        evaluation = Evaluation.from_result(result)
        if evaluation is not None:
            by_step[evaluation.step if "step" in result else index] = evaluation
    return [by_step[step] for step in sorted(by_step)]
