"""`python -m gpt4all_ray.data`: what the data pipeline does to a data set, before any training.

Rows read, dropped per reason, per-source counts, the split, truncated rows and EOS, tokens, and
the padding each collation would waste. `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from typing import Any

from gpt4all_ray.config import EMBEDDED_DATA, LENGTH_POLICIES, PROMPT_FORMATS, TrialConfig
from gpt4all_ray.data import SplitData, load_split
from gpt4all_ray.data.collate import packed_rows
from gpt4all_ray.data.encode import IGNORE, Example, FormatError, NoChatTemplate, TooLong, encode_rows
from gpt4all_ray.data.sources import DataError

SHOWN = 3
"""Rows `--show` prints when given no number."""


def padding_fraction(examples: list[Example], batch: int, max_length: int | None, packed: bool = False) -> float:
    """Share of token slots that are padding, batching in order; max_length=None pads to the
    longest row of each batch, else every row to max_length (GPT4All's collation); packed fills
    rows of max_length with whole examples first (as the `pack` collation does)."""
    lengths = [len(e.input_ids) for e in examples]
    slots = 0
    for i in range(0, len(lengths), batch):
        chunk = lengths[i : i + batch]
        if packed and max_length:
            rows = packed_rows(chunk, max_length)
            slots += len(rows) * max(sum(chunk[j] for j in row) for row in rows)
        else:
            slots += len(chunk) * (max_length or max(chunk))
    return 1 - sum(lengths) / slots if slots else 0.0


def describe(cfg: TrialConfig, data: SplitData, tokenizer: Any, batch: int) -> dict[str, Any]:
    train, encoded = encode_rows(data.train, tokenizer, cfg.max_length, cfg.length_policy, cfg.prompt_format)
    val, _ = encode_rows(data.val, tokenizer, cfg.max_length, cfg.length_policy, cfg.prompt_format)
    report = data.report
    return {
        "data": cfg.data,
        "rows_in": report.rows_in,
        "rows_kept": report.rows_kept,
        "dropped": {reason: len(rows) for reason, rows in sorted(report.dropped.items())},
        "dropped_first_rows": {reason: rows[:5] for reason, rows in sorted(report.dropped.items())},
        "sources": dict(sorted(Counter(r["source"] for r in data.train + data.val).items())),
        "train_rows": report.train_rows,
        "val_rows": report.val_rows,
        "max_length": cfg.max_length,
        "train_truncated_rows": encoded.truncated,
        "train_rows_with_eos": encoded.with_eos,
        "train_prompts_capped": encoded.prompts_capped,
        "length_policy": cfg.length_policy,
        "train_dropped_too_long": len(encoded.dropped_too_long),
        "train_tokens": sum(len(e.input_ids) for e in train),
        "train_label_tokens": sum(sum(label != IGNORE for label in e.labels) for e in train),
        "val_tokens": sum(len(e.input_ids) for e in val),
        "padding_fraction": {
            "pad_to_longest": round(padding_fraction(train, batch, None), 4),
            "pad_to_max_length": round(padding_fraction(train, batch, cfg.max_length), 4),
            "pack": round(padding_fraction(train, batch, cfg.max_length, packed=True), 4),
        },
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def show_examples(cfg: TrialConfig, data: SplitData, tokenizer: Any, n: int) -> str:
    """The first n training rows as the model sees them, in the prompt format: «...» is masked
    out of the loss, the rest is learned; <EOS> is a learned EOS, and a row cut at max_length ends
    with <truncated, no EOS>."""
    examples, _ = encode_rows(data.train[:n], tokenizer, cfg.max_length, cfg.length_policy, cfg.prompt_format)
    eos, out = tokenizer.eos_token_id, []
    for e in examples:
        runs: list[tuple[bool, list[int]]] = []  # (learned, ids), each a maximal stretch
        for token, label in zip(e.input_ids, e.labels, strict=True):
            if runs and runs[-1][0] == (label != IGNORE):
                runs[-1][1].append(token)
            else:
                runs.append((label != IGNORE, [token]))
        text = "".join(
            "<EOS>".join(tokenizer.decode(part) for part in _split(ids, eos))
            if learned
            else f"«{tokenizer.decode(ids)}»"
            for learned, ids in runs
        )
        out.append(text + ("" if e.labels[-1] == eos else " <truncated, no EOS>"))
    return "\n---\n".join(out)


def _split(ids: list[int], separator: int) -> list[list[int]]:
    """str.split for token ids: the parts between separators (a trailing one leaves an empty part)."""
    parts: list[list[int]] = [[]]
    for token in ids:
        if token == separator:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt4all-ray data", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=EMBEDDED_DATA, help="embedded, or a JSONL/JSON/CSV/Parquet file or folder")
    p.add_argument(
        "--model", default=TrialConfig.model, help="whose tokenizer counts tokens: built-in, or a HF folder/name"
    )
    p.add_argument("--rows", type=int, default=TrialConfig.data_rows, help="rows of the embedded data set")
    p.add_argument("--seed", type=int, default=0, help="data seed (embedded rows and the split)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--response-column", default="response")
    p.add_argument("--source-column", default="source")
    p.add_argument("--input-column", default="", help="joined to the prompt with a newline")
    p.add_argument("--explode-column", default="", help="list-of-objects column whose items become rows")
    p.add_argument("--messages-column", default="messages", help="column of conversations (role/content turns)")
    p.add_argument(
        "--prompt-format",
        default="gpt4all",
        choices=PROMPT_FORMATS,
        help="gpt4all (### Prompt: / ### Response:) or chat_template (the tokenizer's own)",
    )
    p.add_argument("--include-sources", default="", help="comma-separated")
    p.add_argument("--exclude-sources", default="", help="comma-separated")
    p.add_argument("--train-only-sources", default="", help="comma-separated; never held out for validation")
    p.add_argument("--max-length", type=int, default=TrialConfig.max_length)
    p.add_argument(
        "--length-policy",
        default="truncate",
        choices=LENGTH_POLICIES,
        help="rows that do not fit max_length: truncate (no EOS), drop or raise",
    )
    p.add_argument("--val-fraction", type=float, default=TrialConfig.val_fraction)
    p.add_argument("--batch", type=int, default=TrialConfig.per_device_batch, help="rows per batch for padding")
    p.add_argument(
        "--show",
        type=int,
        nargs="?",
        const=SHOWN,
        default=0,
        help=f"print N training rows (default {SHOWN}) as the model sees them, «masked» from the loss",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(
        TrialConfig(),
        model=args.model,
        data=args.data,
        data_rows=args.rows,
        data_seed=args.seed,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        source_column=args.source_column,
        input_column=args.input_column,
        explode_column=args.explode_column,
        messages_column=args.messages_column,
        prompt_format=args.prompt_format,
        include_sources=args.include_sources,
        exclude_sources=args.exclude_sources,
        train_only_sources=args.train_only_sources,
        max_length=args.max_length,
        length_policy=args.length_policy,
        val_fraction=args.val_fraction,
    )
    try:
        data = load_split(cfg)
        from gpt4all_ray.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg, data)
        summary = describe(cfg, data, tokenizer, args.batch)
    except (DataError, TooLong, FormatError, NoChatTemplate) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>22}: {value}")
    if args.show:
        print(show_examples(cfg, data, tokenizer, args.show))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
