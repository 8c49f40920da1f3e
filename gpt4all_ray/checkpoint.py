"""Checkpoints: a Hugging Face export of the model (when it improved) and, always, the state that
resumes the run exactly (DeepSpeed engine with optimizer and scheduler, RNG per rank, loop
position).

Every rank writes into its own folder; Ray Train merges the ranks' folders into one checkpoint
(DeepSpeed names each rank's files apart), and a local run reports one shared folder.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig

RESUME_DIR = "resume"  # left out of results/<experiment>/best (torch is imported lazily for results.py)
ENGINE_TAG = "engine"
LOOP_STATE = "loop_state.json"


@dataclass
class LoopState:
    """Where the loop stands; with the engine state and RNG it resumes a run step for step."""

    epoch: int = 1
    """The epoch in progress (1-based)."""
    step_in_epoch: int = 0
    """Optimizer steps done in this epoch: the data position in its fixed permutation."""
    global_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_label_tokens: float = 0.0
    evaluations: list[tuple[float, float]] = field(default_factory=list)
    """(epoch progress, validation loss) of every evaluation: what the divergence policy judges."""
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    best_step: int = 0
    best_probes: dict[str, float] = field(default_factory=dict)
    """Generation probe scores of the best checkpoint (gpt4all_ray.probes)."""
    skipped_at_last_evaluation: int = 0
    """The engine's skipped-step count at the previous evaluation."""
    train_seconds: float = 0.0
    """Wall time inside optimizer steps, all attempts: the rest of a trial's time is overhead."""

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum = self.epoch_label_tokens = 0.0


def save_model(
    engine: Any,
    tokenizer: Any,
    cfg: TrialConfig,
    ds_config: dict[str, Any],
    metrics: dict[str, Any],
    folder: Path,
    rank: int,
    save_embeddings: bool,
) -> None:
    """Hugging Face format (full model or PEFT adapter) plus the tokenizer used in training.
    Call on every rank: under ZeRO-3 all of them gather the partitioned weights."""
    state = engine._zero3_consolidated_16bit_state_dict() if cfg.zero_stage == 3 else None
    if rank != 0:
        return
    kwargs: dict[str, Any] = {"state_dict": state} if state is not None else {}
    if cfg.method == "lora":
        # Embeddings grown for a new pad token are not in the base model on disk: ship them.
        kwargs["save_embedding_layers"] = save_embeddings
    engine.module.save_pretrained(folder, **kwargs)
    tokenizer.save_pretrained(folder)
    (folder / "trial_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (folder / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


def save_state(engine: Any, state: LoopState, folder: Path, rank: int) -> None:
    """Call on every rank (DeepSpeed saves each rank's optimizer partition)."""
    import torch

    resume = folder / RESUME_DIR
    engine.save_checkpoint(str(resume), tag=ENGINE_TAG)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, resume / f"rng_rank{rank}.pt")
    if rank == 0:
        (resume / LOOP_STATE).write_text(json.dumps(asdict(state), indent=2))


def has_state(folder: Path) -> bool:
    return (folder / RESUME_DIR / LOOP_STATE).is_file()


def load_state(engine: Any, folder: Path, rank: int) -> LoopState:
    import torch

    resume = folder / RESUME_DIR
    if not has_state(folder):
        raise FileNotFoundError(f"{folder}: no resumable state ({RESUME_DIR}/{LOOP_STATE} missing)")
    loaded, _ = engine.load_checkpoint(
        str(resume), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if loaded is None:
        raise RuntimeError(f"{resume}: DeepSpeed could not load the engine state tagged {ENGINE_TAG!r}")
    rng = torch.load(resume / f"rng_rank{rank}.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    saved = json.loads((resume / LOOP_STATE).read_text())
    saved["evaluations"] = [tuple(e) for e in saved["evaluations"]]
    return LoopState(**saved)
