"""Generation probes: greedy answers to a fixed sample of validation prompts, scored as GPT4All's
team judged their models by hand. Did the model stop (EOS before the token limit; their first
model never did)? How long were its answers? Did it repeat itself (3-grams seen earlier in the same
answer)? And, where the data has one right answer, did it give it (exact match)?

The worker runs them on each new best checkpoint, across its ranks; `python -m gpt4all_ray.inspection.analyze`
runs them on a saved one.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from gpt4all_ray.config import EMBEDDED_DATA, TrialConfig, source_set
from gpt4all_ray.data.encode import prompts_before_answer, row_encoder
from gpt4all_ray.data.synthetic import FAMILIES, Row

REPEAT_N = 3
# The embedded data's families each have one right answer, except the random-word stories.
EMBEDDED_EXACT = frozenset(FAMILIES) - {"creative"}


@dataclass
class ProbeCounts:
    """Sums over prompts, so that ranks' shares add up."""

    prompts: float = 0.0
    stopped: float = 0.0
    new_tokens: float = 0.0
    ngrams: float = 0.0
    repeated_ngrams: float = 0.0
    exact_prompts: float = 0.0
    exact_hits: float = 0.0

    def add(self, other: ProbeCounts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def scores(self) -> dict[str, float]:
        """stop_rate, mean_new_tokens, repetition_rate, and exact_match where any prompt has an
        exact answer (NaN otherwise)."""
        return {
            "stop_rate": self.stopped / max(self.prompts, 1),
            "mean_new_tokens": self.new_tokens / max(self.prompts, 1),
            "repetition_rate": self.repeated_ngrams / max(self.ngrams, 1),
            "exact_match": self.exact_hits / self.exact_prompts if self.exact_prompts else math.nan,
        }


def exact_sources(cfg: TrialConfig) -> frozenset[str]:
    if cfg.exact_answer_sources:
        return source_set(cfg.exact_answer_sources)
    return EMBEDDED_EXACT if cfg.data == EMBEDDED_DATA else frozenset()


def probe_rows(rows: list[Row], n: int, seed: int) -> list[Row]:
    """The same sample for every trial and checkpoint of an experiment."""
    return random.Random(seed).sample(rows, min(n, len(rows)))


def repeated_ngrams(tokens: list[int], n: int = REPEAT_N) -> tuple[int, int]:
    """(n-grams in the answer, those that already occurred earlier in it)."""
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return len(grams), repeats


def score(answer: list[int], stopped: bool, row: Row, exact: frozenset[str], tokenizer: Any) -> ProbeCounts:
    """One prompt's counts; `answer` holds the generated tokens before EOS."""
    grams, repeats = repeated_ngrams(answer)
    counts = ProbeCounts(1, float(stopped), len(answer), grams, repeats)
    if row.get("source") in exact:
        counts.exact_prompts = 1
        text = tokenizer.decode(answer, skip_special_tokens=True)
        counts.exact_hits = float(stopped and text.strip() == row["response"].strip())
    return counts


def generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, device: Any, synced: bool = False
) -> list[tuple[list[int], bool]]:
    """Greedy answers, one batch, prompts left-padded: (tokens before EOS, whether EOS came)."""
    import torch

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
            synced_gpus=synced,  # ZeRO-3: every rank runs forwards until all are done
            # Gradient checkpointing turns the model's KV cache off for training (config.use_cache);
            # generation keeps it: without it each new token re-runs the whole sequence.
            use_cache=True,
        )
    answers = []
    for new in out[:, width:].tolist():
        stop = new.index(eos) if eos in new else None
        answers.append((new[:stop] if stop is not None else new, stop is not None))
    return answers


def run_probes(
    model: Any,
    tokenizer: Any,
    cfg: TrialConfig,
    rows: list[Row],
    device: Any = "cpu",
    rank: int = 0,
    world: int = 1,
    synced: bool = False,
    batch_size: int = 16,
) -> ProbeCounts:
    """This rank's share (rows[rank::world]) of the probes. Every rank runs the same number of
    generate calls (ZeRO-3 gathers weights in each forward); a rank with none left re-runs its
    first prompt uncounted."""
    encoder = row_encoder(tokenizer, cfg.max_length, cfg.prompt_format)
    exact = exact_sources(cfg)
    mine = rows[rank::world]
    calls = math.ceil(math.ceil(len(rows) / world) / batch_size)
    counts = ProbeCounts()
    was_training = model.training
    model.eval()
    for i in range(calls):
        chunk = mine[i * batch_size : (i + 1) * batch_size]
        prompts = prompts_before_answer(encoder, chunk or mine[:1] or rows[:1])
        answers = generate(model, tokenizer, prompts, cfg.probe_max_new_tokens, device, synced)
        for row, (answer, stopped) in zip(chunk, answers, strict=False):
            counts.add(score(answer, stopped, row, exact, tokenizer))
    model.train(was_training)
    return counts
