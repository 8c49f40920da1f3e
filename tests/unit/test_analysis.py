"""Per-example loss as gpt4all-ray measures it (per response token) against GPT4All's loss map
(per max_length - 1 positions), and the helpers of the analysis report."""

from __future__ import annotations

import math

import pytest
import torch

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.encode import IGNORE, encode_rows
from gpt4all_ray.data.synthetic import generate_rows
from gpt4all_ray.inspection.losses import example_losses, map_2d, perplexity, prompt_type, spearman
from gpt4all_ray.train.model import build_model


def test_length_bias_is_gone_for_examples_of_equal_difficulty() -> None:
    """An untrained model finds every token equally hard, so examples differ only in length:
    GPT4All's per-sequence loss grows with the response, ours does not."""
    cfg = TrialConfig(data_rows=600)
    tokenizer = build_tokenizer(load_split(cfg))
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    rows = [r for r in generate_rows(1500, seed=3) if r["source"] in ("creative", "copy")][:120]
    examples, _ = encode_rows(rows, tokenizer, cfg.max_length)
    scored = example_losses(model, examples, tokenizer.pad_token_id, cfg.max_length)
    lengths = [float(e.response_tokens) for e in scored]
    assert max(lengths) > 3 * min(lengths)  # lengths spread enough to show a trend
    ours = spearman([e.loss for e in scored], lengths)
    gpt4all = spearman([e.gpt4all_loss for e in scored], lengths)
    print(f"Spearman with response length: per response token {ours:+.2f}, GPT4All's {gpt4all:+.2f}")
    assert abs(ours) < 0.3
    assert gpt4all > 0.9


def test_example_loss_is_the_mean_over_its_response_tokens() -> None:
    cfg = TrialConfig(data_rows=300)
    tokenizer = build_tokenizer(load_split(cfg))
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer).eval()
    examples, _ = encode_rows(load_split(cfg).val[:5], tokenizer, cfg.max_length)
    scored = example_losses(model, examples, tokenizer.pad_token_id, cfg.max_length, batch_size=2)
    one = examples[3]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([one.input_ids])).logits[0, :-1]
    targets = torch.tensor(one.labels[1:])
    keep = targets != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep]).item()
    assert scored[3].loss == pytest.approx(expected, rel=1e-5)
    assert scored[3].response_tokens == int(keep.sum())
    assert scored[3].gpt4all_loss == pytest.approx(expected * int(keep.sum()) / (cfg.max_length - 1), rel=1e-5)
    total = sum(e.loss_sum for e in scored) / sum(e.response_tokens for e in scored)
    assert perplexity(scored) == pytest.approx(math.exp(total))


def test_spearman_prompt_type_and_map() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894, abs=1e-3)  # ties share a rank
    assert prompt_type("Write a short story about a clock.") == "write a"
    assert prompt_type("What is 2 + 3?") == "what is"
    line = [[float(i), 2.0 * i, 0.0] for i in range(5)]  # on a line: one component carries it all
    xy = map_2d(line)
    assert len({round(x, 6) for x, _ in xy}) == 5
    assert all(abs(y) < 1e-9 for _, y in xy)
