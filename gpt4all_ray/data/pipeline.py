"""Rows -> cleaned, de-duplicated, split. Every dropped row is counted by reason."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gpt4all_ray.data.synthetic import Row

SHOWN_ROW_NUMBERS = 5


@dataclass
class DataReport:
    rows_in: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)
    """Reason -> 0-based row numbers of the rows dropped for it."""
    train_rows: int = 0
    val_rows: int = 0

    @property
    def rows_kept(self) -> int:
        return self.rows_in - sum(len(v) for v in self.dropped.values())

    def drop(self, reason: str, row_number: int) -> None:
        self.dropped.setdefault(reason, []).append(row_number)

    def summary(self) -> str:
        parts = [f"{self.rows_in} rows in, {self.rows_kept} kept"]
        for reason, numbers in sorted(self.dropped.items()):
            shown = ", ".join(map(str, numbers[:SHOWN_ROW_NUMBERS]))
            more = ", ..." if len(numbers) > SHOWN_ROW_NUMBERS else ""
            parts.append(f"{len(numbers)} dropped as {reason} (rows {shown}{more})")
        parts.append(f"{self.train_rows} train / {self.val_rows} validation")
        return "; ".join(parts)


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def clean_and_dedup(
    rows: list[Row], report: DataReport, include: frozenset[str] = frozenset(), exclude: frozenset[str] = frozenset()
) -> list[Row]:
    """Drop rows whose source is filtered out (GPT4All dropped the homogeneous P3 subset), rows
    with an empty or non-string prompt/response, then exact duplicates. `include` empty = all."""
    report.rows_in = len(rows)
    seen: set[tuple[str, ...]] = set()
    kept = []
    for i, row in enumerate(rows):
        source = row.get("source", "")
        if (include and source not in include) or source in exclude:
            report.drop("source_filtered", i)
            continue
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            report.drop("wrong_type", i)
            continue
        if not prompt.strip() or not response.strip():
            report.drop("empty", i)
            continue
        # A conversation is a duplicate only of the same whole conversation.
        turns = row.get("messages") or ()
        key = (_normalised(prompt), _normalised(response), *(f"{t['role']}:{_normalised(t['content'])}" for t in turns))
        if key in seen:
            report.drop("duplicate", i)
            continue
        seen.add(key)
        kept.append(row)
    return kept


def split(
    rows: list[Row], val_fraction: float, seed: int, report: DataReport, train_only: frozenset[str] = frozenset()
) -> tuple[list[Row], list[Row]]:
    """Seeded shuffle, then the first `val_fraction` of the eligible rows is validation; rows
    from `train_only` sources always train. Runs before sharding, so the split is the same
    whatever the number of workers."""
    eligible = [i for i, r in enumerate(rows) if r.get("source") not in train_only]
    random.Random(seed).shuffle(eligible)
    n_val = max(1, round(len(eligible) * val_fraction)) if eligible else 0
    held_out = set(eligible[:n_val])
    val = [r for i, r in enumerate(rows) if i in held_out]
    train = [r for i, r in enumerate(rows) if i not in held_out]
    report.train_rows, report.val_rows = len(train), len(val)
    return train, val
