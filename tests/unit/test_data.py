"""Embedded data, tokenizer and encoding: deterministic, and free of GPT4All's data bugs."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.collate import pad_to_longest
from gpt4all_ray.data.encode import IGNORE, Example, encode_rows
from gpt4all_ray.data.pipeline import DataReport, clean_and_dedup, split
from gpt4all_ray.data.synthetic import FAMILIES, generate_rows, to_jsonl

CFG = TrialConfig()


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    return load_split(CFG)


@pytest.fixture(scope="module")
def tokenizer(data):  # noqa: ANN001, ANN201
    return build_tokenizer(data)


def test_same_seed_byte_identical_other_seed_different() -> None:
    a, b = to_jsonl(generate_rows(500, seed=3)), to_jsonl(generate_rows(500, seed=3))
    assert hashlib.sha256(a.encode()).hexdigest() == hashlib.sha256(b.encode()).hexdigest()
    assert to_jsonl(generate_rows(500, seed=4)) != a


def test_rows_have_gpt4all_fields_and_every_family() -> None:
    rows = generate_rows(2000, seed=0)
    assert all(set(r) == {"prompt", "response", "source"} for r in rows)
    counts = Counter(r["source"] for r in rows)
    assert set(counts) == set(FAMILIES) >= {"copy", "lookup", "counting", "reversal", "arithmetic", "code", "creative"}


def test_answers_are_exact() -> None:
    for row in generate_rows(300, seed=1):
        if row["source"] == "arithmetic":
            expr = row["prompt"].removeprefix("What is ").removesuffix("?")
            assert str(eval(expr)) == row["response"]  # noqa: S307 (our own generated digits)
        if row["source"] == "reversal":
            word = row["prompt"].split("'")[1]
            assert row["response"] == word[::-1]
        if row["source"] == "counting":
            letter, word = row["prompt"].split("'")[1], row["prompt"].split("'")[3]
            assert row["response"] == str(word.count(letter))


def test_some_rows_exceed_max_length_and_are_truncated_without_eos(data, tokenizer) -> None:  # noqa: ANN001
    examples, report = encode_rows(data.train, tokenizer, CFG.max_length)
    assert report.truncated > 0 and report.with_eos > 0
    assert report.truncated + report.with_eos == len(examples)
    for i in report.truncated_rows:
        e = examples[i]
        assert len(e.input_ids) == CFG.max_length
        assert tokenizer.eos_token_id not in e.labels  # GPT4All's bug: EOS on truncated rows
    fitting = [e for i, e in enumerate(examples) if i not in set(report.truncated_rows)]
    assert all(e.input_ids[-1] == e.labels[-1] == tokenizer.eos_token_id for e in fitting)


def test_prompt_masked_and_capped(data, tokenizer) -> None:  # noqa: ANN001
    examples, report = encode_rows(data.train, tokenizer, CFG.max_length)
    assert report.prompts_capped > 0  # long copy prompts
    for e in examples:
        prompt_len = next(i for i, label in enumerate(e.labels) if label != IGNORE)
        assert prompt_len <= CFG.max_length // 2
        assert all(label == IGNORE for label in e.labels[:prompt_len])
        assert e.labels[prompt_len:] == e.input_ids[prompt_len:]


def test_pad_is_not_eos_and_never_labelled(tokenizer) -> None:  # noqa: ANN001
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    batch = pad_to_longest([Example([5, 6, 7], [IGNORE, 6, 7]), Example([5], [5])], tokenizer.pad_token_id)
    assert batch["input_ids"][1].tolist() == [5, tokenizer.pad_token_id, tokenizer.pad_token_id]
    assert batch["labels"][1].tolist() == [5, IGNORE, IGNORE]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_tokenizer_saves_tokenizer_json_and_reloads(tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Reverse the letters of the word 'kalo'."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (again.eos_token_id, again.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_tokenizer_training_is_deterministic(data, tokenizer) -> None:  # noqa: ANN001
    again = build_tokenizer(data)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_every_dropped_row_is_counted() -> None:
    rows = [
        {"prompt": "a", "response": "b"},
        {"prompt": " A ", "response": "b"},  # duplicate after normalisation
        {"prompt": "", "response": "b"},
        {"prompt": "c", "response": "   "},
        {"prompt": 3, "response": "d"},
        {"prompt": "e", "response": "f"},
    ]
    report = DataReport()
    kept = clean_and_dedup(rows, report)  # type: ignore[arg-type]
    assert len(kept) == 2 == report.rows_kept
    assert report.dropped == {"duplicate": [1], "empty": [2, 3], "wrong_type": [4]}
    assert "1 dropped as duplicate (rows 1)" in report.summary()


def test_split_is_seeded_disjoint_and_complete(data) -> None:  # noqa: ANN001
    keys = lambda rows: {(r["prompt"], r["response"]) for r in rows}  # noqa: E731
    assert not keys(data.train) & keys(data.val)
    assert data.report.train_rows + data.report.val_rows == data.report.rows_kept
    again = load_split(CFG)
    assert again.val == data.val
    report = DataReport()
    other_train, _ = split(data.train + data.val, 0.05, seed=99, report=report)
    assert other_train != data.train


def test_padding_to_max_length_gives_the_same_loss(data, tokenizer) -> None:  # noqa: ANN001
    import torch

    from gpt4all_ray.train.loss import loss_sum_and_count
    from gpt4all_ray.train.model import build_model

    model = build_model(CFG, tokenizer).eval()
    examples, _ = encode_rows(data.val[:8], tokenizer, CFG.max_length)
    with torch.no_grad():
        short = loss_sum_and_count(model, pad_to_longest(examples, tokenizer.pad_token_id))
        full = loss_sum_and_count(model, pad_to_longest(examples, tokenizer.pad_token_id, CFG.max_length))
    assert full[1] == short[1] > 0
    assert float(full[0]) == pytest.approx(float(short[0]), rel=1e-5)
