"""Packing must give every example the same loss it gets alone (GPT-J and LLaMA)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.collate import pack, packed_rows, pad_to_longest
from gpt4all_ray.data.encode import IGNORE, Example, encode_rows
from gpt4all_ray.train.loss import loss_sum_and_count
from gpt4all_ray.train.model import build_model

CFG = TrialConfig(data_rows=400)
DATA = load_split(CFG)
TOKENIZER = build_tokenizer(DATA)
EXAMPLES, _ = encode_rows(DATA.train[:12], TOKENIZER, CFG.max_length)


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return F.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE, reduction="none"
    )


def test_first_fit_rows() -> None:
    assert packed_rows([5, 4, 3, 6, 1], max_length=8) == [[0, 2], [1, 4], [3]]
    assert packed_rows([9], max_length=8) == [[0]]  # an over-long example still gets a row


@pytest.mark.parametrize("model_name", ["tiny-gptj", "tiny-llama"])
def test_packed_per_example_loss_equals_unpacked(model_name: str) -> None:
    model = build_model(dataclasses.replace(CFG, model=model_name), TOKENIZER).eval()
    packed = pack(EXAMPLES, TOKENIZER.pad_token_id, CFG.max_length)
    assert packed["input_ids"].shape[0] < len(EXAMPLES)  # it did pack
    with torch.no_grad():
        alone = token_losses(model, pad_to_longest(EXAMPLES, TOKENIZER.pad_token_id))
        together = token_losses(model, packed)
    spans = []  # (example, packed row, start, end) in the first-fit layout
    for r, row in enumerate(packed_rows([len(e.input_ids) for e in EXAMPLES], CFG.max_length)):
        start = 0
        for i in row:
            spans.append((i, r, start, start + len(EXAMPLES[i].input_ids)))
            start += len(EXAMPLES[i].input_ids)
    assert sorted(i for i, *_ in spans) == list(range(len(EXAMPLES)))
    for i, r, start, end in spans:
        n = len(EXAMPLES[i].input_ids)
        assert packed["input_ids"][r, start:end].tolist() == EXAMPLES[i].input_ids
        assert packed["position_ids"][r, start:end].tolist() == list(range(n))
        mine = alone[i, : n - 1]
        theirs = together[r, start : end - 1]
        assert torch.allclose(theirs, mine, atol=1e-5), f"example {i}"
    with torch.no_grad():
        packed_sum, packed_count = loss_sum_and_count(model, packed)
        padded_sum, padded_count = loss_sum_and_count(model, pad_to_longest(EXAMPLES, TOKENIZER.pad_token_id))
    assert packed_count == padded_count
    assert float(packed_sum) == pytest.approx(float(padded_sum), rel=1e-5)


def test_no_label_crosses_an_example_boundary_or_sits_on_padding() -> None:
    packed = pack(EXAMPLES, TOKENIZER.pad_token_id, CFG.max_length)
    starts = packed["position_ids"] == 0
    assert bool((packed["labels"][starts] == IGNORE).all())
    pads = packed["input_ids"] == TOKENIZER.pad_token_id
    assert bool((packed["labels"][pads] == IGNORE).all())


def test_packed_layout_written_out() -> None:
    """Two rows of max length 5: [a a a b b] and [c c c c pad], every field spelled out."""
    a, b, c = Example([1, 2, 3], [IGNORE, 2, 3]), Example([4, 5], [4, 5]), Example([6, 7, 8, 9], [6, 7, 8, 9])
    packed = pack([a, b, c], pad_id=0, max_length=5)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert packed["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5], [IGNORE, 7, 8, 9, IGNORE]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    first = [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    second = [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert packed["attention_mask"].shape == (2, 1, 5, 5)
    assert packed["attention_mask"][:, 0].int().tolist() == [first, second]
