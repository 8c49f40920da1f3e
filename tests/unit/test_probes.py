"""Generation probes: the scoring rules, batched greedy generation, and the stop-rate constraint
as the report uses it (the searcher's side is in test_searcher.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.encode import PromptEncoder
from gpt4all_ray.experiment.records import TrialRecord, best_record
from gpt4all_ray.train.model import build_model
from gpt4all_ray.train.probes import EMBEDDED_EXACT, ProbeCounts, exact_sources, generate, repeated_ngrams, score

CFG = TrialConfig(data_rows=300)


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return build_tokenizer(load_split(CFG))


def test_repeated_ngrams_counts_each_repeat_of_an_earlier_3gram() -> None:
    assert repeated_ngrams([1, 2, 3, 1, 2, 3]) == (4, 1)
    assert repeated_ngrams([5, 5, 5, 5, 5]) == (3, 2)
    assert repeated_ngrams([1, 2]) == (0, 0)


def test_exact_match_needs_the_answer_and_its_end(tokenizer: object) -> None:
    row = {"prompt": "What is 2 + 3?", "response": "5", "source": "arithmetic"}
    answer = tokenizer("5", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert score(answer, True, row, EMBEDDED_EXACT, tokenizer).exact_hits == 1
    assert score(answer, False, row, EMBEDDED_EXACT, tokenizer).exact_hits == 0  # it did not stop
    wrong = tokenizer("6", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert score(wrong, True, row, EMBEDDED_EXACT, tokenizer).exact_hits == 0
    story = {"prompt": "Write a short story about a clock.", "response": "Apple river.", "source": "creative"}
    assert score(answer, True, story, EMBEDDED_EXACT, tokenizer).exact_prompts == 0  # no one right answer


def test_scores_are_shares_and_exact_match_is_nan_without_exact_answers() -> None:
    counts = ProbeCounts(prompts=4, stopped=3, new_tokens=20, ngrams=10, repeated_ngrams=5)
    scores = counts.scores()
    assert (scores["stop_rate"], scores["mean_new_tokens"], scores["repetition_rate"]) == (0.75, 5.0, 0.5)
    assert math.isnan(scores["exact_match"])
    counts.add(ProbeCounts(prompts=1, exact_prompts=2, exact_hits=1))
    assert counts.scores()["exact_match"] == 0.5 and counts.prompts == 5


def test_exact_sources_default_to_the_embedded_families_only() -> None:
    assert exact_sources(CFG) == EMBEDDED_EXACT and "creative" not in EMBEDDED_EXACT
    assert exact_sources(TrialConfig(data="rows.jsonl")) == frozenset()
    assert exact_sources(TrialConfig(exact_answer_sources="math, trivia")) == {"math", "trivia"}


@pytest.mark.parametrize("model", ["tiny-gptj", "tiny-llama"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(model: str, tokenizer: object) -> None:
    cfg = TrialConfig(model=model, data_rows=300)
    torch.manual_seed(0)
    net = build_model(cfg, tokenizer).eval()
    encode = PromptEncoder(tokenizer, cfg.max_length)
    prompts = [encode(r["prompt"])[0] for r in load_split(cfg).val[:6]]
    assert len({len(p) for p in prompts}) > 1  # the batch needs padding
    batched = generate(net, tokenizer, prompts, 12, "cpu")
    assert batched == [generate(net, tokenizer, [p], 12, "cpu")[0] for p in prompts]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_probes_of_a_gradient_checkpointed_model_generate_with_the_kv_cache(method: str, tokenizer: object) -> None:
    cfg = TrialConfig(data_rows=300, gradient_checkpointing=True, method=method)
    torch.manual_seed(0)
    net = build_model(cfg, tokenizer)
    assert net.config.use_cache is False  # what training set
    widths: list[int] = []
    embeddings = net.get_input_embeddings()
    hook = embeddings.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    prompt = PromptEncoder(tokenizer, cfg.max_length)(load_split(cfg).val[0]["prompt"])[0]
    ((answer, stopped),) = generate(net.eval(), tokenizer, [prompt], 8, "cpu")
    hook.remove()
    # The prompt once, then one new token a forward: each step reads the cache of the ones before.
    assert widths[0] == len(prompt) and widths[1:] == [1] * (len(widths) - 1) and len(widths) >= 2


def record(trial_id: str, loss: float, stop_rate: float, tmp: str) -> TrialRecord:
    return TrialRecord(trial_id, {}, best_val_loss=loss, checkpoint_path=tmp, probes={"stop_rate": stop_rate})


def test_best_trial_is_the_lowest_loss_that_meets_the_stop_rate(tmp_path: Path) -> None:
    records = [record("low_loss_never_stops", 1.0, 0.5, str(tmp_path)), record("stops", 1.2, 0.95, str(tmp_path))]
    assert best_record(records)[0].trial_id == "low_loss_never_stops"  # type: ignore[union-attr]
    best, met = best_record(records, min_stop_rate=0.9)
    assert (best.trial_id, met) == ("stops", True)  # type: ignore[union-attr]
    best, met = best_record(records, min_stop_rate=0.99)
    assert (best.trial_id, met) == ("low_loss_never_stops", False)  # type: ignore[union-attr]
