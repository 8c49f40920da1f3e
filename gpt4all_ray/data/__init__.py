"""Data path: load rows, clean, de-duplicate, split, tokenize, collate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt4all_ray.config import EMBEDDED_DATA, TrialConfig, source_set
from gpt4all_ray.data.pipeline import DataReport, clean_and_dedup, split
from gpt4all_ray.data.sources import Columns, DataError, load_rows
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
        raw = load_rows(cfg.data, Columns.of(cfg))
    check_sources_named(cfg, raw)
    rows = clean_and_dedup(raw, report, source_set(cfg.include_sources), source_set(cfg.exclude_sources))
    train, val = split(rows, cfg.val_fraction, cfg.data_seed, report, source_set(cfg.train_only_sources))
    return SplitData(train, val, report)


class UnknownSource(DataError):
    """A source filter names a source no row has (a typo would otherwise filter silently)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check_sources_named(cfg: TrialConfig, rows: list[Row]) -> None:
    present = {str(row.get("source", "")) for row in rows}
    for key in ("include_sources", "exclude_sources", "train_only_sources"):
        unknown = sorted(source_set(getattr(cfg, key)) - present)
        if unknown:
            listed = ", ".join(repr(s) for s in sorted(present)[:20]) + (" ..." if len(present) > 20 else "")
            raise UnknownSource(
                key, f"no row has source {', '.join(map(repr, unknown))}; the sources present: {listed}"
            )


def build_tokenizer(data: SplitData) -> Any:
    """The embedded tokenizer is trained on the training rows only (validation stays unseen)."""
    from gpt4all_ray.data.encode import plain_text
    from gpt4all_ray.data.tokenizer import train_tokenizer

    return train_tokenizer(plain_text(r) for r in data.train)
