"""Data path: load rows, clean, de-duplicate, split, tokenize, collate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt4all_ray.config import EMBEDDED_DATA, TrialConfig, source_set
from gpt4all_ray.data.pipeline import DataReport, clean_and_dedup, split
from gpt4all_ray.data.sources import Columns, load_rows
from gpt4all_ray.data.synthetic import Row, generate_rows


@dataclass
class SplitData:
    train: list[Row]
    val: list[Row]
    report: DataReport


def load_split(cfg: TrialConfig) -> SplitData:
    """The same rows and split on every worker and on the driver (all deterministic)."""
    report = DataReport()
    if cfg.data == EMBEDDED_DATA:
        raw = generate_rows(cfg.data_rows, cfg.data_seed)
    else:
        columns = Columns(
            cfg.prompt_column, cfg.response_column, cfg.source_column, cfg.input_column, cfg.explode_column
        )
        raw = load_rows(cfg.data, columns)
    rows = clean_and_dedup(raw, report, source_set(cfg.include_sources), source_set(cfg.exclude_sources))
    train, val = split(rows, cfg.val_fraction, cfg.data_seed, report, source_set(cfg.train_only_sources))
    return SplitData(train, val, report)


def build_tokenizer(data: SplitData) -> Any:
    """The embedded tokenizer is trained on the training rows only (validation stays unseen)."""
    from gpt4all_ray.data.encode import prompt_text
    from gpt4all_ray.data.tokenizer import train_tokenizer

    return train_tokenizer(prompt_text(r["prompt"]) + r["response"] for r in data.train)
