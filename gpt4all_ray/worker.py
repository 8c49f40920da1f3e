"""The per-worker fine-tuning loop: DeepSpeed engine, LR schedule, per-epoch evaluation,
divergence decision, checkpoint and report.

Ray comes in only through `Reporter`, so the same loop runs under torchrun (the GPU check and
the bare-loop baseline) and in fast tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.collate import pack, pad_to_longest
from gpt4all_ray.data.encode import IGNORE, encode_rows
from gpt4all_ray.divergence import COMPLETED, DivergencePolicy
from gpt4all_ray.ds_config import deepspeed_config, gradient_accumulation
from gpt4all_ray.loss import loss_sum_and_count
from gpt4all_ray.model import build_model, ensure_pad_token
from gpt4all_ray.schedule import lr_multiplier


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Called by every rank once per epoch; rank 0 passes the checkpoint folder."""


class HyperparameterMismatch(RuntimeError):
    """A sampled value did not reach the optimizer (GPT4All's weight-decay knob never did)."""


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """DeepSpeed prints op-build lines on import (when torch.distributed is up) and on init. Under
    Ray Train, print() is patched to log at INFO, so stdout redirection alone does not hide them."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


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
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class TrialRun:
    """One worker's share of a trial: data, model and DeepSpeed engine, built once."""

    def __init__(self, cfg: TrialConfig, threads: int = 1) -> None:
        # DeepSpeed picks its accelerator at import: CPU here, CUDA on a GPU node.
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        _quiet_libraries()
        torch.set_num_threads(threads)
        with _silenced():
            import deepspeed

            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.cfg = cfg
        self.rank, self.world = _rank_and_world()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"

        self.data = load_split(cfg)
        self.tokenizer = build_tokenizer(self.data)
        ensure_pad_token(self.tokenizer)
        encode = (self.tokenizer, cfg.max_length, cfg.length_policy)
        self.train_examples, self.encode_report = encode_rows(self.data.train, *encode)
        self.val_examples, _ = encode_rows(self.data.val, *encode)
        self.steps_per_epoch = len(self.train_examples) // cfg.global_batch
        if self.steps_per_epoch == 0:
            rows = len(self.train_examples)
            raise ValueError(f"{rows} training rows make no step of global_batch {cfg.global_batch}")
        self.accumulation = gradient_accumulation(cfg, self.world)

        model = build_model(cfg, self.tokenizer)
        multiplier = lr_multiplier(cfg.lr_schedule, cfg.warmup_steps, self.steps_per_epoch * cfg.epochs)
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        self.ds_config = deepspeed_config(cfg, self.world)
        with _silenced():
            self.engine, ds_optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=self.scheduler, config=self.ds_config
            )
        check_hyperparameters(ds_optimizer, cfg, multiplier(0))
        self.global_step = 0

    def batch(self, examples: list[Any]) -> dict[str, Any]:
        pad_id, cfg = self.tokenizer.pad_token_id, self.cfg
        if cfg.collate == "pack":
            tensors = pack(examples, pad_id, cfg.max_length)
        else:
            tensors = pad_to_longest(examples, pad_id, cfg.max_length if cfg.collate == "max_length" else None)
        return {k: v.to(self.device) for k, v in tensors.items()}

    def all_reduced_mean(self, loss_sum: float, count: float) -> float:
        """Token-weighted mean over all workers."""
        totals = torch.tensor([loss_sum, count], dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(totals)
        return (totals[0] / totals[1].clamp(min=1)).item()

    def train_epoch(self, epoch: int, writer: Any) -> float:
        """One pass over the training rows; returns the all-reduced token-weighted train loss."""
        cfg = self.cfg
        # The same permutation on every rank; each takes every world-th row of each global batch.
        shuffle = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(self.train_examples), generator=shuffle)
        epoch_loss = epoch_tokens = window_loss = window_tokens = 0.0
        window_start = time.perf_counter()
        for step in range(self.steps_per_epoch):
            mine = order[step * cfg.global_batch : (step + 1) * cfg.global_batch][self.rank :: self.world].tolist()
            for micro in range(self.accumulation):
                picked = mine[micro * cfg.per_device_batch : (micro + 1) * cfg.per_device_batch]
                batch = self.batch([self.train_examples[i] for i in picked])
                loss = self.engine(**batch).loss
                self.engine.backward(loss)
                self.engine.step()
                tokens = float((batch["labels"][:, 1:] != IGNORE).sum())
                window_loss += loss.item() * tokens
                window_tokens += tokens
            self.global_step += 1
            if self.global_step % cfg.log_every_steps == 0 or step == self.steps_per_epoch - 1:
                if writer:
                    self._log_window(writer, window_loss, window_tokens, time.perf_counter() - window_start)
                epoch_loss, epoch_tokens = epoch_loss + window_loss, epoch_tokens + window_tokens
                window_loss = window_tokens = 0.0
                window_start = time.perf_counter()
        return self.all_reduced_mean(epoch_loss, epoch_tokens)

    def _log_window(self, writer: Any, loss: float, tokens: float, seconds: float) -> None:
        writer.add_scalar("train/loss", loss / max(tokens, 1), self.global_step)
        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.global_step)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(grad_norm):
            writer.add_scalar("train/grad_norm", float(grad_norm), self.global_step)
        writer.add_scalar("train/label_tokens_per_s_rank0", tokens / max(seconds, 1e-9), self.global_step)

    def evaluate(self) -> float:
        """Token-weighted validation loss over all workers' shards."""
        # Every rank runs the same number of forwards (ZeRO-3 gathers weights in each one);
        # a rank with nothing left re-runs its first example and does not count it.
        b = self.cfg.per_device_batch
        shard = self.val_examples[self.rank :: self.world]
        n_batches = math.ceil(math.ceil(len(self.val_examples) / self.world) / b)
        loss_sum = count = 0.0
        self.engine.eval()
        with torch.no_grad():
            for i in range(n_batches):
                chunk = shard[i * b : (i + 1) * b]
                batch_sum, batch_count = loss_sum_and_count(self.engine, self.batch(chunk or shard[:1]))
                if chunk:
                    loss_sum, count = loss_sum + batch_sum.item(), count + batch_count.item()
        self.engine.train()
        return self.all_reduced_mean(loss_sum, count)


def train(cfg: TrialConfig, reporter: Reporter, tb_dir: str | None = None, threads: int = 1) -> None:
    """Train for cfg.epochs, evaluating each epoch; stop on all ranks at once when the divergence
    policy says so. A checkpoint is saved and reported only when the validation loss improved."""
    run = TrialRun(cfg, threads)
    writer = None
    if run.rank == 0 and tb_dir:
        writer = SummaryWriter(tb_dir)
    policy = DivergencePolicy(grace_epochs=cfg.grace_epochs, min_delta=cfg.min_delta)
    history: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        train_loss = run.train_epoch(epoch, writer)
        val_loss = run.evaluate()
        history.append(val_loss)
        decision = policy.decide(history)  # the same all-reduced losses on every rank: the same decision
        metrics = {
            "epoch": epoch,
            "step": run.global_step,
            "val_loss": val_loss,
            "val_ppl": math.exp(val_loss) if val_loss < 50 else math.inf,
            "train_loss": train_loss,
            "best_val_loss": decision.best,
            "best_epoch": decision.best_at,
            "lr": run.scheduler.get_last_lr()[0],
            "epoch_s": time.perf_counter() - started,
            "stop_reason": decision.reason or (COMPLETED if epoch == cfg.epochs else ""),
            "truncated_rows": run.encode_report.truncated,
            "dropped_too_long_rows": len(run.encode_report.dropped_too_long),
            "duplicate_rows": len(run.data.report.dropped.get("duplicate", [])),
        }
        if writer:
            writer.add_scalar("val/loss", val_loss, run.global_step)
            writer.add_scalar("val/loss_by_epoch", val_loss, epoch)
            writer.flush()
        with tempfile.TemporaryDirectory(prefix="gpt4all_ray_ckpt_") as tmp:
            checkpoint = None
            if decision.best_at == epoch:
                save_checkpoint(run.engine, run.tokenizer, cfg, run.ds_config, metrics, tmp, run.rank)
                checkpoint = tmp if run.rank == 0 else None
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
    from ray.train.v2._internal.execution import context

    # Ray 2.60 logs every report at INFO under a logger named by file path, which Train's
    # LoggingConfig(log_level=...) does not reach; our progress lines already say the same.
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    train(TrialConfig(**config["trial"]), RayTrainReporter(), config.get("tb_dir"), config.get("threads", 1))
