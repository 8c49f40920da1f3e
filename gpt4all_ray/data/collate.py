"""Examples -> padded batch tensors. Pad positions never carry a label."""

from __future__ import annotations

import torch

from gpt4all_ray.data.encode import IGNORE, Example


def pad_to_longest(examples: list[Example], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of the batch, or to `length` (GPT4All padded every row to
    max_length: the same loss, more wasted slots)."""
    longest = length or max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
