"""Examples -> batch tensors. Pad positions never carry a label.

Three collations: pad each batch to its longest row (default), pad every row to max_length
(GPT4All's), or pack a batch's examples into as few rows as fit max_length, with positions
restarting and attention kept inside each example (a block-diagonal causal mask), so every
example sees exactly what it would see alone.
"""

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


def packed_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """First-fit, in order: the indices of the examples that share each packed row."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i, n in enumerate(lengths):
        for r, total in enumerate(used):
            if total + n <= max_length:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    return rows


def pack(examples: list[Example], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    rows = packed_rows([len(e.input_ids) for e in examples], max_length)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    attend = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            e, n = examples[i], len(examples[i].input_ids)
            end = start + n
            ids[r, start:end] = torch.tensor(e.input_ids)
            labels[r, start:end] = torch.tensor(e.labels)
            # The first token is never a target on its own; packed, it would be the previous
            # example's next token, so it must not carry a label.
            labels[r, start] = IGNORE
            positions[r, start:end] = torch.arange(n)
            attend[r, 0, start:end, start:end] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            start = end
        for p in range(start, width):  # a pad attends to itself only: no empty softmax rows
            attend[r, 0, p, p] = True
    return {"input_ids": ids, "attention_mask": attend, "labels": labels, "position_ids": positions}
