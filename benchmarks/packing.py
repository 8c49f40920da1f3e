"""Packing: non-pad tokens/s of the three collations side by side on one model, one process,
over a length distribution shaped like GPT4All's (mean about 45% of max length, long tail,
some rows cut at max length), with each example's loss checked equal across collations.

    python benchmarks/packing.py [--max-length 1024] [--batch 32] [--steps 6] [--rounds 3]

Model: the built-in tiny GPT-J; GPT4All-J's full fine-tune used 32 rows a device, max length
1024. Each step is a forward, backward and AdamW step on one micro-batch of `--batch` examples,
collated as GPT4All did (every row padded to max length), padded to the batch's longest row, or
packed (the batch's examples share rows, with positions restarting and attention kept inside
each example). The collations take turns, `--rounds` times over the same batches; the figure is
tokens/s relative to max-length padding.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import GPTJForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt4all_ray.config import TrialConfig  # noqa: E402
from gpt4all_ray.data.collate import pack, packed_rows, pad_to_longest  # noqa: E402
from gpt4all_ray.data.encode import IGNORE, Example  # noqa: E402
from gpt4all_ray.train.loss import token_losses  # noqa: E402
from gpt4all_ray.train.model import padded_vocab, tiny_config  # noqa: E402

VOCAB = 2000
PAD = 1


def gpt4all_like_lengths(n: int, max_length: int, seed: int) -> list[int]:
    """Log-normal lengths (sigma 0.8), cut at max_length, scaled so the mean is 45% of it."""
    rng = random.Random(seed)
    draws = [rng.lognormvariate(0.0, 0.8) for _ in range(n)]
    low, high = 1.0, float(max_length)
    for _ in range(60):  # bisect the scale: the cut makes the mean non-linear in it
        scale = (low + high) / 2
        mean = statistics.fmean(min(max_length, max(16, round(d * scale))) for d in draws)
        low, high = (scale, high) if mean < 0.45 * max_length else (low, scale)
    return [min(max_length, max(16, round(d * scale))) for d in draws]


def make_examples(lengths: list[int], seed: int) -> list[Example]:
    """Random tokens; the first third of each row is prompt (no labels), the rest response."""
    rng = random.Random(seed)
    examples = []
    for n in lengths:
        ids = [rng.randrange(2, VOCAB) for _ in range(n)]
        prompt = max(1, n // 3)
        examples.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return examples


def collate(name: str, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    if name == "pack":
        return pack(examples, PAD, max_length)
    return pad_to_longest(examples, PAD, max_length if name == "max_length" else None)


def example_losses(model: torch.nn.Module, name: str, examples: list[Example], max_length: int) -> list[float]:
    """Each example's mean loss over its own response tokens, read out of the collated batch."""
    batch = collate(name, examples, max_length)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    per_token, targets = token_losses(logits, batch["labels"])
    spans = []  # (row, start, end) of each example
    if name == "pack":
        for r, row in enumerate(packed_rows([len(e.input_ids) for e in examples], max_length)):
            start = 0
            for i in row:
                spans.append((i, r, start, start + len(examples[i].input_ids)))
                start += len(examples[i].input_ids)
        spans = [s[1:] for s in sorted(spans)]
    else:
        spans = [(r, 0, len(e.input_ids)) for r, e in enumerate(examples)]
    out = []
    for r, start, end in spans:
        mask = targets[r, start : end - 1] != IGNORE
        out.append(float(per_token[r, start : end - 1][mask].mean()))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="micro-batches per collation per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrialConfig(max_length=args.max_length)
    config = tiny_config(cfg.model, padded_vocab(VOCAB))
    config.pad_token_id = PAD
    model = GPTJForCausalLM(config)
    lengths = gpt4all_like_lengths(args.batch * args.steps, args.max_length, seed=0)
    examples = make_examples(lengths, seed=1)
    batches = [examples[i * args.batch : (i + 1) * args.batch] for i in range(args.steps)]
    names = ("max_length", "longest", "pack")

    # The same example, three collations: its loss must not depend on its neighbours.
    model.eval()
    losses = {name: example_losses(model, name, batches[0], args.max_length) for name in names}
    alone = [example_losses(model, "longest", [e], args.max_length)[0] for e in batches[0]]
    worst = {name: max(abs(a - b) / b for a, b in zip(losses[name], alone, strict=True)) for name in names}
    model.train()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rates: dict[str, list[float]] = {name: [] for name in names}
    slots: dict[str, int] = {}
    for _ in range(args.rounds):
        for name in names:
            tokens, started = 0, time.perf_counter()
            slots[name] = 0
            for batch_examples in batches:
                batch = collate(name, batch_examples, args.max_length)
                tokens += int((batch["input_ids"] != PAD).sum())
                slots[name] += batch["input_ids"].numel()
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            rates[name].append(tokens / (time.perf_counter() - started))
    base = statistics.median(rates["max_length"])
    real = sum(lengths)
    result = {
        "max_length": args.max_length,
        "batch": args.batch,
        "examples": len(lengths),
        "mean_length_share": statistics.fmean(lengths) / args.max_length,
        "median_length_share": statistics.median(lengths) / args.max_length,
        "cut_at_max_share": sum(n == args.max_length for n in lengths) / len(lengths),
        "per_collation": {
            name: {
                "tokens_per_s": statistics.median(rates[name]),
                "ratio_to_max_length": statistics.median(rates[name]) / base,
                "non_pad_share_of_slots": real / slots[name],
                "max_rel_loss_diff_vs_alone": worst[name],
            }
            for name in names
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    ok = all(math.isfinite(v["max_rel_loss_diff_vs_alone"]) for v in result["per_collation"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
