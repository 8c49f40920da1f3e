"""Checkpoints: a Hugging Face export of the model (when it improved) and, always, the state that
resumes the run exactly (DeepSpeed engine with optimizer and scheduler, RNG per rank, loop
position).

Every rank writes into its own folder; Ray Train merges the ranks' folders into one checkpoint
(DeepSpeed names each rank's files apart), and a local run reports one shared folder.

Each rank ends its save with a manifest of the files it wrote (path and size), written last and
atomically: a checkpoint cut short (a save or a copy that died, a file truncated or deleted later)
fails `check_resumable`, and `pick_resumable` falls back to the newest older one that passes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig

RESUME_DIR = "resume"  # left out of <experiment>/best (torch is imported lazily for experiment/records.py)
ENGINE_TAG = "engine"
LOOP_STATE = "loop_state.json"
MANIFEST = "manifest_rank{rank}.json"


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
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    """(global step, validation loss) of every evaluation: what the divergence policy judges."""
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    best_step: int = 0
    best_probes: dict[str, float] = field(default_factory=dict)
    """Generation probe scores of the best checkpoint (gpt4all_ray.train.probes)."""
    skipped_at_last_evaluation: int = 0
    """The engine's skipped-step count at the previous evaluation."""
    train_seconds: float = 0.0
    """Wall time inside optimizer steps, all attempts: the rest of a trial's time is overhead."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time in each phase outside optimizer steps (evaluation.PHASES), all attempts."""

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
    """Call on every rank (DeepSpeed saves each rank's optimizer partition), each with its own
    folder: the manifest lists every file under the rank's resume/."""
    import torch
    import torch.distributed as dist

    resume = folder / RESUME_DIR
    # Frozen weights (LoRA's base model) are left out: a resumed run loads them from the model as
    # it did at its start. For a 7B LoRA trial that is ~13.5 GB less per checkpoint.
    engine.save_checkpoint(str(resume), tag=ENGINE_TAG, exclude_frozen_parameters=True)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, resume / f"rng_rank{rank}.pt")
    if rank == 0:
        (resume / LOOP_STATE).write_text(json.dumps(asdict(state), indent=2))
    world = dist.get_world_size() if dist.is_initialized() else 1
    write_manifest(folder, rank, world)


def write_manifest(folder: Path, rank: int, world: int) -> None:
    """The rank's record of every file under folder/resume/ (relative path -> bytes). Written last
    and atomically (a temp name, then os.replace): a rank whose save died has no manifest."""
    resume = folder / RESUME_DIR
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(resume.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest_rank")
    }
    manifest = resume / MANIFEST.format(rank=rank)
    partial = manifest.with_name(manifest.name + ".partial")
    partial.write_text(json.dumps({"rank": rank, "world_size": world, "files": files}, indent=2))
    os.replace(partial, manifest)


def saved_step(folder: Path) -> int | None:
    """The checkpoint's global step, or None where its loop state is missing or unreadable."""
    try:
        step = json.loads((folder / RESUME_DIR / LOOP_STATE).read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def check_resumable(folder: Path) -> str | None:
    """None when the folder holds a complete resumable state, else one line saying what is wrong.
    Cheap: existence, sizes and JSON parsing, never a hash of the (possibly many GB) shards."""
    resume = folder / RESUME_DIR
    if not folder.is_dir():
        return "the folder does not exist"
    if not resume.is_dir():
        return f"no {RESUME_DIR}/ folder"
    if not (resume / LOOP_STATE).is_file():
        return f"{RESUME_DIR}/{LOOP_STATE} missing"
    if saved_step(folder) is None:
        return f"{RESUME_DIR}/{LOOP_STATE} is unparsable or has no global_step"
    if not any(resume.glob(MANIFEST.format(rank="*"))):
        return f"no {RESUME_DIR}/{MANIFEST.format(rank='*')}: saved before checkpoints had manifests, or never finished"
    first = _read_manifest(folder, 0)
    if isinstance(first, str):
        return first
    world = first.get("world_size")
    if not isinstance(world, int) or world < 1:
        return f"{RESUME_DIR}/{MANIFEST.format(rank=0)} has no valid world_size"
    for rank in range(world):
        manifest = first if rank == 0 else _read_manifest(folder, rank)
        if isinstance(manifest, str):
            return manifest
        for relative, size in manifest["files"].items():
            path = folder / relative
            if not path.is_file():
                return f"{relative} missing"
            if path.stat().st_size != size:
                return f"{relative} is {path.stat().st_size} bytes, expected {size}"
    return None


def _read_manifest(folder: Path, rank: int) -> dict[str, Any] | str:
    """The rank's manifest, or what is wrong with it."""
    name = f"{RESUME_DIR}/{MANIFEST.format(rank=rank)}"
    try:
        manifest = json.loads((folder / name).read_text())
    except FileNotFoundError:
        return f"{name} missing: rank {rank} never finished saving"
    except (OSError, ValueError) as error:
        return f"{name} is unreadable ({type(error).__name__}: {error})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{name} has no file list"
    return manifest


def resume_candidates(folder: Path) -> list[Path]:
    """The checkpoint handed over, then the sibling folders holding a resumable state (Ray's
    checkpoint_* beside it, step-<n> in the tests), newest first by step, unreadable ones last."""
    siblings = []
    if folder.parent.is_dir():
        siblings = [p for p in folder.parent.iterdir() if p.resolve() != folder.resolve() and (p / RESUME_DIR).is_dir()]
    steps = {p: saved_step(p) for p in siblings}
    handed = saved_step(folder)
    if handed is not None:
        # A newer sibling was never handed over (a dead attempt's checkpoint whose report Ray
        # dropped): resuming from it would skip that report. Fall back only to older ones.
        siblings = [p for p in siblings if (steps[p] or 0) <= handed]
    return [folder, *sorted(siblings, key=lambda p: (steps[p] is None, -(steps[p] or 0), p.name))]


class NoUsableCheckpoint(RuntimeError):
    """Every candidate checkpoint is broken: the trial fails rather than start from scratch."""


@dataclass(frozen=True)
class ResumePoint:
    folder: Path
    step: int
    skipped: list[tuple[Path, str]]
    """(candidate, what is wrong with it) of each newer checkpoint passed over."""

    def fallback_lines(self) -> list[str]:
        return [
            f"checkpoint {path} is not usable ({problem}); resuming from {self.folder} (step {self.step}) instead"
            for path, problem in self.skipped
        ]


def pick_resumable(folder: Path) -> ResumePoint:
    """The newest valid checkpoint among `resume_candidates(folder)`. Deterministic given the
    files, so every rank of a shared filesystem picks the same one."""
    skipped: list[tuple[Path, str]] = []
    for candidate in resume_candidates(folder):
        problem = check_resumable(candidate)
        step = saved_step(candidate)
        if problem is None and step is not None:
            return ResumePoint(candidate, step, skipped)
        skipped.append((candidate, problem or "no step"))
    listed = "; ".join(f"{path} ({problem})" for path, problem in skipped)
    raise NoUsableCheckpoint(f"no usable checkpoint to resume from (none loaded, nothing restarted): {listed}")


def _check_trained_weights_saved(engine: Any, resume: Path) -> None:
    import torch

    for states in sorted((resume / ENGINE_TAG).glob("*model_states.pt")):
        saved = torch.load(states, map_location="cpu", mmap=True, weights_only=False).get("module") or {}
        missing = [n for n, p in engine.module.named_parameters() if p.requires_grad and n not in saved]
        if saved and missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise NoUsableCheckpoint(f"{states}: trained weights missing from the checkpoint: {shown}")


def load_state(engine: Any, folder: Path, rank: int) -> LoopState:
    """Refuses a folder that fails `check_resumable`: a broken checkpoint is never loaded."""
    import torch

    resume = folder / RESUME_DIR
    problem = check_resumable(folder)
    if problem:
        raise NoUsableCheckpoint(f"{folder}: not resumable ({problem})")
    # Strict unless weights are frozen: those are not in the checkpoint (save_state), so the load
    # cannot be strict; every trained weight must be there, checked first.
    frozen = any(not p.requires_grad for p in engine.module.parameters())
    if frozen:
        _check_trained_weights_saved(engine, resume)
    loaded, _ = engine.load_checkpoint(
        str(resume),
        tag=ENGINE_TAG,
        load_module_strict=not frozen,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
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
