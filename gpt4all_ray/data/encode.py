"""Rows -> token ids and labels: prompt masked out of the loss, conditional EOS, capped prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpt4all_ray.data.synthetic import Row

IGNORE = -100
PROMPT_HEAD = "### Prompt:\n"
RESPONSE_HEAD = "\n### Response:\n"


@dataclass
class EncodeReport:
    rows: int = 0
    with_eos: int = 0
    truncated: int = 0
    prompts_capped: int = 0
    truncated_rows: list[int] = field(default_factory=list)
    dropped_too_long: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def prompt_text(prompt: str) -> str:
    return PROMPT_HEAD + prompt + RESPONSE_HEAD


class TooLong(ValueError):
    """A row that does not fit max_length under length_policy=raise."""


def encode_rows(
    rows: list[Row], tokenizer: Any, max_length: int, length_policy: str = "truncate"
) -> tuple[list[Example], EncodeReport]:
    """EOS is appended and labelled only when prompt + response fit untruncated (GPT4All appended it
    to truncated rows too, teaching the model to stop mid-answer). Prompts are capped at half of
    max_length, as GPT4All did, so every row keeps room for its response. A row that still does not
    fit is truncated (no EOS), dropped (counted) or an error, by `length_policy`."""
    report = EncodeReport(rows=len(rows))
    head = tokenizer(PROMPT_HEAD, add_special_tokens=False)["input_ids"]
    tail = tokenizer(RESPONSE_HEAD, add_special_tokens=False)["input_ids"]
    prompt_budget = max_length // 2 - len(head) - len(tail)
    if prompt_budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a prompt after the template")
    eos = tokenizer.eos_token_id
    examples = []
    for i, row in enumerate(rows):
        body = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        if len(body) > prompt_budget:
            body = body[:prompt_budget]
            report.prompts_capped += 1
        prompt = head + body + tail
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        if len(prompt) + len(response) + 1 <= max_length:
            ids = prompt + response + [eos]
            labels = [IGNORE] * len(prompt) + response + [eos]
            report.with_eos += 1
        elif length_policy == "drop":
            report.dropped_too_long.append(i)
            continue
        elif length_policy == "raise":
            raise TooLong(
                f"row {i} (source {row.get('source')!r}): prompt {len(prompt)} + response {len(response)} + EOS "
                f"tokens do not fit max_length {max_length} (length_policy: raise)"
            )
        else:
            ids = (prompt + response)[:max_length]
            labels = ([IGNORE] * len(prompt) + response)[:max_length]
            report.truncated += 1
            report.truncated_rows.append(i)
        examples.append(Example(ids, labels))
    return examples, report
