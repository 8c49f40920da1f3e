"""What prompt_format: chat_template costs the experiment's one data build, against gpt4all's
template, on GPT4All-shaped rows (issue 28).

    python benchmarks/prompt_formats.py [--rows 50000] [--repeats 3] [--out FILE]

Rows: setup_scale.py's GPT4All-shaped JSONL (prompt of ~40 words, log-normal responses, ~460
tokens a row at max_length 1024), and its byte-level BPE tokenizer of 8,192 tokens, given
ChatML's turn markers as special tokens, its EOS `<|im_end|>` and a ChatML chat template (as Qwen's
and many instruct models' tokenizers carry), so both formats encode with the same vocabulary.

Metric, fixed before the run: seconds of encode_rows (the build's encoding: every row laid out,
tokenized, its answer marked) over the same rows, chat_template / gpt4all, the arms alternating
`--repeats` times in one process. Reported: each repeat's ratio, their median and range, and each
arm's rows a second. No goal: it is a cost for planning a search (the one build of 400k rows
scales with it; `results/benchmarks.md` gives the build's own seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.setup_scale import save_tokenizer, write_rows  # noqa: E402

MAX_LENGTH = 1024
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chatml_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"], "eos_token": "<|im_end|>"})
    tokenizer.chat_template = CHATML
    return tokenizer


def timed_encode(rows: list[dict[str, Any]], tokenizer: Any, prompt_format: str) -> tuple[float, int]:
    from gpt4all_ray.data.encode import encode_rows

    started = time.perf_counter()
    examples, _ = encode_rows(rows, tokenizer, MAX_LENGTH, "truncate", prompt_format)
    return time.perf_counter() - started, sum(len(e.input_ids) for e in examples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows_file, folder = Path(tmp) / "rows.jsonl", Path(tmp) / "tokenizer"
        write_rows(rows_file, args.rows)
        save_tokenizer(folder, rows_file)
        tokenizer = chatml_tokenizer(folder)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    repeats = []
    for repeat in range(args.repeats):
        seconds, tokens = {}, {}
        for prompt_format in ("gpt4all", "chat_template"):
            seconds[prompt_format], tokens[prompt_format] = timed_encode(rows, tokenizer, prompt_format)
        ratio = seconds["chat_template"] / seconds["gpt4all"]
        repeats.append({"seconds": seconds, "tokens": tokens, "ratio": ratio})
        print(
            f"repeat {repeat}: gpt4all {seconds['gpt4all']:.1f} s, chat_template {seconds['chat_template']:.1f} s, "
            f"ratio {ratio:.2f}; tokens {tokens['gpt4all']:,} / {tokens['chat_template']:,}",
            flush=True,
        )
    ratios = [r["ratio"] for r in repeats]
    rate = {f: args.rows / statistics.median(r["seconds"][f] for r in repeats) for f in ("gpt4all", "chat_template")}
    result = {
        "rows": args.rows,
        "max_length": MAX_LENGTH,
        "repeats": repeats,
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "rows_per_s": rate,
    }
    print(
        f"chat_template / gpt4all encoding seconds: median {result['ratio_median']:.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} repeats); rows/s gpt4all {rate['gpt4all']:,.0f}, "
        f"chat_template {rate['chat_template']:,.0f}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
