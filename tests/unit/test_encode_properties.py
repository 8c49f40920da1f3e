"""Property tests of the encoding and split invariants (GPT4All's data bugs as properties)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.collate import pad_to_longest
from gpt4all_ray.data.encode import IGNORE, TooLong, encode_rows
from gpt4all_ray.data.pipeline import DataReport, clean_and_dedup, split

TOKENIZER = build_tokenizer(load_split(TrialConfig(data_rows=400)))
EOS, PAD = TOKENIZER.eos_token_id, TOKENIZER.pad_token_id
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300)
rows = st.lists(
    st.fixed_dictionaries({"prompt": text, "response": text, "source": st.sampled_from("abc")}), min_size=1, max_size=8
)


@settings(max_examples=60, deadline=None)
@given(rows=rows, max_length=st.integers(min_value=32, max_value=160))
def test_eos_iff_untruncated_and_no_label_on_prompt_or_pad(rows: list[dict], max_length: int) -> None:
    examples, report = encode_rows(rows, TOKENIZER, max_length)
    assert len(examples) == len(rows) == report.with_eos + report.truncated
    for i, e in enumerate(examples):
        assert len(e.input_ids) == len(e.labels) <= max_length
        labelled = [label for label in e.labels if label != IGNORE]
        truncated = i in report.truncated_rows
        assert (labelled[-1:] == [EOS]) == (not truncated)  # EOS labelled iff the row was not truncated
        assert labelled.count(EOS) == (0 if truncated else 1)
        first = next(j for j, label in enumerate(e.labels) if label != IGNORE) if labelled else len(e.labels)
        assert first <= max_length // 2  # capped prompt: the response always has room
        assert all(label == IGNORE for label in e.labels[:first])  # no label on the prompt
    batch = pad_to_longest(examples, PAD)
    assert bool(((batch["attention_mask"] == 0) <= (batch["labels"] == IGNORE)).all())  # no label on pads
    assert PAD != EOS


@settings(max_examples=30, deadline=None)
@given(rows=rows, max_length=st.integers(min_value=32, max_value=96))
def test_length_policies_agree_on_which_rows_do_not_fit(rows: list[dict], max_length: int) -> None:
    _, truncating = encode_rows(rows, TOKENIZER, max_length, "truncate")
    kept, dropping = encode_rows(rows, TOKENIZER, max_length, "drop")
    assert dropping.dropped_too_long == truncating.truncated_rows
    assert len(kept) == len(rows) - len(dropping.dropped_too_long)
    if truncating.truncated_rows:
        with pytest.raises(TooLong, match=f"row {truncating.truncated_rows[0]} "):
            encode_rows(rows, TOKENIZER, max_length, "raise")


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries({"prompt": st.text(max_size=6), "response": st.text(max_size=3)}), max_size=60),
    fraction=st.floats(min_value=0.05, max_value=0.5),
    seed=st.integers(0, 2**16),
)
def test_split_counts_add_up_no_overlap_and_same_for_any_worker_count(
    rows: list[dict], fraction: float, seed: int
) -> None:
    report = DataReport()
    kept = clean_and_dedup(rows, report)  # type: ignore[arg-type]
    assert report.rows_in == len(rows) == report.rows_kept + sum(len(v) for v in report.dropped.values())
    if not kept:
        return
    train, val = split(kept, fraction, seed, report)
    assert report.train_rows + report.val_rows == report.rows_kept
    key = lambda r: (r["prompt"].strip().lower(), r["response"].strip().lower())  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}
    # The split runs before sharding; the shards of 1, 2 and 4 workers cover the same rows.
    for world in (1, 2, 4):
        shards = [train[rank::world] for rank in range(world)]
        assert sorted(map(key, (r for shard in shards for r in shard))) == sorted(map(key, train))


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(text, min_size=1, max_size=6))
def test_the_batched_token_ids_are_the_tokenizers_own(texts: list[str]) -> None:
    from gpt4all_ray.data.encode import token_ids

    assert token_ids(TOKENIZER, texts) == TOKENIZER(texts, add_special_tokens=False)["input_ids"]
    assert token_ids(TOKENIZER, texts) == [TOKENIZER(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_the_batched_token_ids_ignore_truncation_a_tokenizer_file_carries(tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    from gpt4all_ray.data.encode import token_ids

    TOKENIZER.save_pretrained(tmp_path)
    carrying = AutoTokenizer.from_pretrained(tmp_path)
    carrying.backend_tokenizer.enable_truncation(max_length=3)  # as a tokenizer.json may say
    texts = ["a fairly long sentence of many words", "x"]
    assert token_ids(carrying, texts) == TOKENIZER(texts, add_special_tokens=False)["input_ids"]
    assert len(token_ids(carrying, texts)[0]) > 3


def test_the_batched_token_ids_treat_special_token_text_as_the_tokenizer_does() -> None:
    from gpt4all_ray.data.encode import token_ids

    texts = ["a <|endoftext|> b", "<|pad|>", " leading space", ""]
    assert token_ids(TOKENIZER, texts) == TOKENIZER(texts, add_special_tokens=False)["input_ids"]
