"""The per-worker fine-tuning loop: DeepSpeed engine, LR schedule, per-epoch evaluation,
divergence decision, checkpoint and report.

Ray comes in only through `Reporter`, so the same loop runs under torchrun (the GPU check and
the bare-loop baseline) and in fast tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.divergence import COMPLETED, DivergencePolicy


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Called by every rank once per epoch; rank 0 passes the checkpoint folder."""


class HyperparameterMismatch(RuntimeError):
    """A sampled value did not reach the optimizer (GPT4All's weight-decay knob never did)."""


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only: biases and norm scales (1-D) are not regularised. LoRA has no 1-D
    # trainables, and an empty group trips ZeRO, so empty groups are left out.
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "decay", "params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def check_hyperparameters(optimizer: Any, cfg: TrialConfig, first_multiplier: float) -> None:
    want_lr = cfg.learning_rate * first_multiplier
    for group in optimizer.param_groups:
        if not math.isclose(group["lr"], want_lr, rel_tol=1e-6):
            raise HyperparameterMismatch(f"param group {group.get('name')}: lr {group['lr']} != sampled {want_lr}")
        want_decay = cfg.weight_decay if group.get("name") == "decay" else 0.0
        if group["weight_decay"] != want_decay:
            raise HyperparameterMismatch(
                f"param group {group.get('name')}: weight decay {group['weight_decay']} in the optimizer, "
                f"{want_decay} wanted (sampled {cfg.weight_decay})"
            )


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def train(cfg: TrialConfig, reporter: Reporter, tb_dir: str | None = None, threads: int = 1) -> None:
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    _quiet_libraries()
    import torch
    import torch.distributed as dist

    from gpt4all_ray.data import build_tokenizer, load_split
    from gpt4all_ray.data.collate import pad_to_longest
    from gpt4all_ray.data.encode import encode_rows
    from gpt4all_ray.ds_config import deepspeed_config, gradient_accumulation
    from gpt4all_ray.loss import loss_sum_and_count
    from gpt4all_ray.model import build_model
    from gpt4all_ray.schedule import lr_multiplier

    torch.set_num_threads(threads)
    # DeepSpeed prints op-build lines on import (when torch.distributed is up, as under Ray) and init.
    with contextlib.redirect_stdout(io.StringIO()):
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = _rank_and_world()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    data = load_split(cfg)
    tokenizer = build_tokenizer(data)
    train_examples, encode_report = encode_rows(data.train, tokenizer, cfg.max_length)
    val_examples, _ = encode_rows(data.val, tokenizer, cfg.max_length)

    model = build_model(cfg, tokenizer)
    accumulation = gradient_accumulation(cfg, world)
    steps_per_epoch = len(train_examples) // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_examples)} training rows make no step of global_batch {cfg.global_batch}")
    multiplier = lr_multiplier(cfg.lr_schedule, cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    ds_config = deepspeed_config(cfg, world)
    with contextlib.redirect_stdout(io.StringIO()):
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
    check_hyperparameters(ds_optimizer, cfg, multiplier(0))

    writer = None
    if rank == 0 and tb_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tb_dir)

    def batch_of(examples: list[Any]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in pad_to_longest(examples, tokenizer.pad_token_id).items()}

    def evaluate() -> float:
        # Every rank runs the same number of forwards (ZeRO-3 gathers weights in each one);
        # a rank with nothing left re-runs its first example with zero weight.
        engine.eval()
        shard = val_examples[rank::world]
        n_batches = math.ceil(math.ceil(len(val_examples) / world) / cfg.per_device_batch)
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for i in range(n_batches):
                chunk = shard[i * cfg.per_device_batch : (i + 1) * cfg.per_device_batch]
                loss_sum, count = loss_sum_and_count(engine, batch_of(chunk or shard[:1]))
                if chunk:
                    totals += torch.stack([loss_sum, count])
        dist.all_reduce(totals)
        engine.train()
        return (totals[0] / totals[1]).item()

    policy = DivergencePolicy(grace_epochs=cfg.grace_epochs, min_delta=cfg.min_delta)
    history: list[float] = []
    global_step = 0
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(train_examples), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        epoch_loss = epoch_tokens = 0.0
        window_loss = window_tokens = 0.0
        window_start = time.perf_counter()
        for step in range(steps_per_epoch):
            chunk = order[step * cfg.global_batch : (step + 1) * cfg.global_batch][rank::world].tolist()
            for micro in range(accumulation):
                picked = chunk[micro * cfg.per_device_batch : (micro + 1) * cfg.per_device_batch]
                batch = batch_of([train_examples[i] for i in picked])
                loss = engine(**batch).loss
                engine.backward(loss)
                engine.step()
                tokens = float((batch["labels"][:, 1:] != -100).sum())
                window_loss += loss.item() * tokens
                window_tokens += tokens
            global_step += 1
            if global_step % cfg.log_every_steps == 0 or step == steps_per_epoch - 1:
                elapsed = time.perf_counter() - window_start
                if writer:
                    writer.add_scalar("train/loss", window_loss / max(window_tokens, 1), global_step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
                    grad_norm = engine.get_global_grad_norm()
                    if grad_norm is not None and math.isfinite(grad_norm):
                        writer.add_scalar("train/grad_norm", float(grad_norm), global_step)
                    writer.add_scalar("train/label_tokens_per_s_rank0", window_tokens / max(elapsed, 1e-9), global_step)
                epoch_loss += window_loss
                epoch_tokens += window_tokens
                window_loss = window_tokens = 0.0
                window_start = time.perf_counter()

        train_totals = torch.tensor([epoch_loss, epoch_tokens], dtype=torch.float64, device=device)
        dist.all_reduce(train_totals)  # token-weighted over all workers, like the validation loss
        val_loss = evaluate()
        history.append(val_loss)
        decision = policy.decide(history)
        improved = decision.best_at == epoch
        last = epoch == cfg.epochs
        stop_reason = decision.reason or (COMPLETED if last else "")
        metrics = {
            "epoch": epoch,
            "step": global_step,
            "val_loss": val_loss,
            "val_ppl": math.exp(val_loss) if val_loss < 50 else math.inf,
            "train_loss": (train_totals[0] / train_totals[1].clamp(min=1)).item(),
            "best_val_loss": decision.best,
            "best_epoch": decision.best_at,
            "lr": scheduler.get_last_lr()[0],
            "epoch_s": time.perf_counter() - started,
            "stop_reason": stop_reason,
            "truncated_rows": encode_report.truncated,
            "duplicate_rows": len(data.report.dropped.get("duplicate", [])),
        }
        if writer:
            writer.add_scalar("val/loss", val_loss, global_step)
            writer.add_scalar("val/loss_by_epoch", val_loss, epoch)
            writer.flush()
        with tempfile.TemporaryDirectory(prefix="gpt4all_ray_ckpt_") as tmp:
            checkpoint = None
            if improved:
                save_checkpoint(engine, tokenizer, cfg, ds_config, metrics, tmp, rank)
                checkpoint = tmp if rank == 0 else None
            reporter.report(metrics, checkpoint)
        if decision.stop:
            break
    if writer:
        writer.close()


def save_checkpoint(
    engine: Any,
    tokenizer: Any,
    cfg: TrialConfig,
    ds_config: dict[str, Any],
    metrics: dict[str, Any],
    folder: str,
    rank: int,
) -> None:
    """Hugging Face format (full model or PEFT adapter) plus the tokenizer used in training."""
    state = engine._zero3_consolidated_16bit_state_dict() if cfg.zero_stage == 3 else None  # all ranks
    if rank != 0:
        return
    out = Path(folder)
    kwargs = {"state_dict": state} if state is not None else {}
    engine.module.save_pretrained(out, **kwargs)
    tokenizer.save_pretrained(out)
    (out / "trial_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (out / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


class RayTrainReporter:
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def ray_train_loop(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    import logging

    from ray.train.v2._internal.execution import context

    # Ray 2.60 logs every report at INFO under a logger named by file path, which Train's
    # LoggingConfig(log_level=...) does not reach; our progress lines already say the same.
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    train(TrialConfig(**config["trial"]), RayTrainReporter(), config.get("tb_dir"), config.get("threads", 1))
