"""Token-weighted loss: the sum over labelled tokens and their count, so that shards combine
exactly (a mean of per-batch means would weight short batches up)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gpt4all_ray.data.encode import IGNORE


def loss_sum_and_count(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss.double(), (targets != IGNORE).sum().double()


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(each target's loss, 0 where masked; the targets): per position, for per-example sums."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return losses, targets
