"""Per-example loss and hidden-state embeddings of a model over instruction rows, done the way
GPT4All's loss maps should have been: each example's loss is the mean over its own response
tokens. GPT4All's per-sequence loss summed the same token losses but divided by all 1023
positions, masked ones included, so it grew with the response's length; it is kept beside ours
(`gpt4all_loss`) to show the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gpt4all_ray.data.collate import pad_to_longest
from gpt4all_ray.data.encode import IGNORE, Example
from gpt4all_ray.train.loss import token_losses


@dataclass
class ExampleLoss:
    loss: float
    """Mean loss over the example's response tokens (EOS included when the row has one)."""
    gpt4all_loss: float
    """The same token losses summed and divided by max_length - 1 (GPT4All's loss map)."""
    loss_sum: float
    response_tokens: int
    tokens: int
    embedding: list[float]
    """Last hidden state, mean over the example's tokens."""


def example_losses(
    model: Any, examples: list[Example], pad_id: int, max_length: int, batch_size: int = 16, device: Any = "cpu"
) -> list[ExampleLoss]:
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_to_longest(chunk, pad_id).items()}
            result = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
            )
            losses, targets = token_losses(result.logits, batch["labels"])
            sums = losses.sum(dim=1)
            counts = (targets != IGNORE).sum(dim=1)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            hidden = result.hidden_states[-1].float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
            for row, example in enumerate(chunk):
                n = int(counts[row])
                total = float(sums[row])
                out.append(
                    ExampleLoss(
                        loss=total / n if n else math.nan,
                        gpt4all_loss=total / (max_length - 1),
                        loss_sum=total,
                        response_tokens=n,
                        tokens=len(example.input_ids),
                        embedding=pooled[row].tolist(),
                    )
                )
    return out


def perplexity(losses: list[ExampleLoss]) -> float:
    """Token-weighted over every response token of every example."""
    tokens = sum(e.response_tokens for e in losses)
    return math.exp(sum(e.loss_sum for e in losses) / tokens) if tokens else math.nan


def map_2d(embeddings: list[list[float]]) -> list[tuple[float, float]]:
    """The first two principal components (centred; a 1-example set maps to the origin)."""
    x = torch.tensor(embeddings, dtype=torch.float64)
    x = x - x.mean(dim=0)
    if len(embeddings) < 3:
        return [(0.0, 0.0)] * len(embeddings)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    xy = x @ v[:2].T
    return [(float(a), float(b)) for a, b in xy.tolist()]


def prompt_type(prompt: str) -> str:
    """The prompt's first two words, lowercased ("write a", "what is"): GPT4All's high-loss
    cluster was one such opening ("Generate a story about ...")."""
    words = prompt.lower().split()[:2]
    return " ".join(w.strip(".,:;!?\"'()") for w in words) or "(empty)"


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties take their mean rank); the test of a length bias."""

    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in t.unique():  # mean rank over ties
            tied = t == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator else math.nan
