"""Examples -> batch tensors. Pad positions never carry a label.

Three collations: pad each batch to its longest row (default), pad every row to max_length
(GPT4All's), or pack a batch's examples into as few rows as fit max_length, with positions
restarting and attention kept inside each example (a block-diagonal causal mask), so every
example sees exactly what it would see alone.
"""

from __future__ import annotations

from array import array

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


def _long_tensor(values: list[int]) -> torch.Tensor:
    # Through a C array: torch.tensor(list) reads a long list ~8x slower.
    return torch.frombuffer(array("q", values), dtype=torch.long)


def pack(examples: list[Example], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    # Built with a few large tensor operations rather than several small ones per example: the
    # host builds each batch between GPU steps (128 examples took ~50 ms the other way).
    rows = packed_rows([len(e.input_ids) for e in examples], max_length)
    lengths = torch.tensor([sum(len(examples[i].input_ids) for i in row) for row in rows])
    width = int(lengths.max())
    filled = torch.arange(width) < lengths[:, None]  # row-major, as the flat lists below
    flat_ids: list[int] = []
    flat_labels: list[int] = []
    flat_positions: list[int] = []
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    attend = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            e, n = examples[i], len(examples[i].input_ids)
            flat_ids += e.input_ids
            # The first token is never a target on its own; packed, it would be the previous
            # example's next token, so it must not carry a label.
            flat_labels += [IGNORE, *e.labels[1:]]
            flat_positions += range(n)
            attend[r, 0, start : start + n, start : start + n] = causal[:n, :n]
            start += n
        attend[r, 0].diagonal()[start:] = True  # a pad attends to itself only: no empty softmax rows
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    ids[filled] = _long_tensor(flat_ids)
    labels[filled] = _long_tensor(flat_labels)
    positions[filled] = _long_tensor(flat_positions)
    return {"input_ids": ids, "attention_mask": attend, "labels": labels, "position_ids": positions}
