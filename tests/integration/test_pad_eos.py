"""The training log's first bug, measured: with pad == eos and pad positions masked out of the
labels, the EOS labels go too, and the model does not learn to stop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.collate import pad_to_longest
from gpt4all_ray.data.encode import IGNORE, Example, encode_rows
from gpt4all_ray.train.model import build_model
from gpt4all_ray.train.probes import run_probes

pytestmark = pytest.mark.integration
CFG = TrialConfig(data_rows=1200)


def train(examples: list[Example], pad_id: int, tokenizer: object, epochs: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(CFG, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(epoch)).tolist()
        for i in range(0, len(order) - 15, 16):
            batch = pad_to_longest([examples[j] for j in order[i : i + 16]], pad_id)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


def test_pad_equal_to_eos_never_learns_to_stop() -> None:
    torch.set_num_threads(2)
    data = load_split(CFG)
    tokenizer = build_tokenizer(data)
    eos = tokenizer.eos_token_id
    examples, _ = encode_rows(data.train, tokenizer, CFG.max_length)
    # GPT4All's first run: pad = eos, and "mask the pads" by token id, which masks every EOS too.
    buggy = [
        dataclasses.replace(
            e, labels=[IGNORE if t == eos else lab for t, lab in zip(e.input_ids, e.labels, strict=True)]
        )
        for e in examples
    ]
    rows = [r for r in data.val if r["source"] != "copy"][:40]

    def stop_rate(model: torch.nn.Module) -> float:
        return run_probes(model, tokenizer, CFG, rows).scores()["stop_rate"]

    separate = stop_rate(train(examples, tokenizer.pad_token_id, tokenizer))
    same = stop_rate(train(buggy, eos, tokenizer))
    print(f"stop rate: separate pad {separate:.2f}, pad == eos {same:.2f}")
    assert same == 0.0
    assert separate >= 0.5
