"""What a checkpoint learned, example by example, against the model it started from.

    gpt4all-ray analyze runs/<experiment>/best [--data PATH] [--self-instruct PATH]

Writes to <checkpoint>-analysis/ (or --out):
  examples.parquet   one row per example: prompt, response, source, prompt type, token counts,
                     loss per response token (and GPT4All's length-biased one), the base model's
                     loss, and both models' 2-D map coordinates
  summary.md         perplexities, generation probes (fine-tuned vs base), the length bias,
                     loss by source and by prompt type, the highest-loss examples
  loss_map.png       examples' hidden-state embeddings (first two principal components), coloured
                     by loss: the base model beside the fine-tuned one
  loss_by_length.png loss against response length, per response token and GPT4All's way
  analysis.json      the figures of summary.md

--data is a file or folder of rows (the trial's columns; default: the trial's own validation
split); --self-instruct a file in self-instruct's format (instruction, instances of input and
output), on which perplexity is reported as GPT4All reported it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data.sources import Columns, DataError
from gpt4all_ray.inspection.device import ON_CPU, Inference, add_flags, from_flags

TOP = 20
SELF_INSTRUCT = Columns(
    prompt="instruction", response="output", source="motivation_app", input="input", explode="instances"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpt4all-ray analyze", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder (runs/<experiment>/best)")
    p.add_argument("--data", help="rows to analyse: a file or folder (default: the trial's validation split)")
    p.add_argument("--self-instruct", type=Path, help="perplexity on this self-instruct-format file")
    p.add_argument("--out", type=Path, help="output folder (default: <checkpoint>-analysis)")
    p.add_argument("--limit", type=int, default=0, help="analyse a seeded sample of this many rows (0: all)")
    p.add_argument("--probes", type=int, default=64, help="prompts answered greedily (0: no probes)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--exact-sources",
        default=None,
        help="comma-separated sources with one right answer (default: the trial's, for its own data)",
    )
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    add_flags(p)
    args = p.parse_args(argv)
    try:
        args.inference = from_flags(args)
    except ValueError as err:
        p.error(str(err))
    return args


def load_analysis_rows(cfg: TrialConfig, data: str | None, limit: int) -> tuple[list[dict[str, str]], str, Any]:
    """(rows, what they are, the cleaning report)."""
    from gpt4all_ray.data import load_split
    from gpt4all_ray.data.pipeline import DataReport, clean_and_dedup
    from gpt4all_ray.data.sources import load_rows

    if data is None:
        split = load_split(cfg)
        rows, label, report = split.val, f"the trial's validation split ({cfg.data})", split.report
    else:
        columns = Columns.of(cfg)
        report = DataReport()
        rows = clean_and_dedup(load_rows(data, columns), report, frozenset(), frozenset())
        label = data
    if not rows:
        raise DataError(f"{label}: no rows left to analyse ({report.summary()})")
    if limit and limit < len(rows):
        rows = random.Random(0).sample(rows, limit)
        label += f", a seeded sample of {limit}"
    return rows, label, report


def score_model(
    model: Any, tokenizer: Any, cfg: TrialConfig, rows: list[dict[str, str]], inference: Inference = ON_CPU
) -> tuple[list[Any], Any]:
    from gpt4all_ray.data.encode import encode_rows
    from gpt4all_ray.inspection.losses import example_losses

    examples, encoded = encode_rows(rows, tokenizer, cfg.max_length, "truncate", cfg.prompt_format)
    pad = tokenizer.pad_token_id
    return example_losses(model, examples, pad, cfg.max_length, inference.batch_size, inference.device), encoded


def probe_scores(
    model: Any, tokenizer: Any, cfg: TrialConfig, rows: list[dict[str, str]], n: int, inference: Inference = ON_CPU
) -> dict[str, float]:
    from gpt4all_ray.train.probes import probe_rows, run_probes

    if not n:
        return {}
    chosen = probe_rows(rows, n, cfg.data_seed)
    return run_probes(model, tokenizer, cfg, chosen, inference.device, batch_size=inference.batch_size).scores()


def base_of(cfg: TrialConfig, tokenizer: Any, inference: Inference = ON_CPU) -> Any:
    """The weights fine-tuning started from: the seeded built-in model, or the pretrained one with
    the same embedding growth."""
    from gpt4all_ray.train.model import base_model

    plain = dataclasses.replace(cfg, method="full", gradient_checkpointing=False)
    return inference.place(base_model(plain, tokenizer)[0])


def by_group(table: list[dict[str, Any]], key: str, top_cut: float) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        groups[row[key]].append(row)
    out = []
    for name, members in groups.items():
        losses = [m["loss"] for m in members if math.isfinite(m["loss"])]
        base = [m["base_loss"] for m in members if m.get("base_loss") is not None and math.isfinite(m["base_loss"])]
        out.append(
            {
                key: name,
                "examples": len(members),
                "mean_loss": statistics.fmean(losses) if losses else math.nan,
                "base_mean_loss": statistics.fmean(base) if base else None,
                "in_top_decile": sum(m["loss"] >= top_cut for m in members),
            }
        )
    return sorted(out, key=lambda g: -g["mean_loss"])


def plot_maps(table: list[dict[str, Any]], path: Path, with_base: bool) -> None:
    from gpt4all_ray.experiment.report import _pyplot, _save

    plt = _pyplot()
    panels = [("base", "base model (before fine-tuning)")] if with_base else []
    panels.append(("tuned", "fine-tuned"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (which, title) in zip(axes[0], panels, strict=True):
        loss_key = "base_loss" if which == "base" else "loss"
        points = ax.scatter(
            [r[f"{which}_x"] for r in table],
            [r[f"{which}_y"] for r in table],
            c=[r[loss_key] for r in table],
            s=8,
            cmap="viridis",
        )
        ax.set_title(f"{title}: hidden states, coloured by loss")
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        fig.colorbar(points, ax=ax, label="loss per response token")
    _save(fig, path)


def plot_length(table: list[dict[str, Any]], path: Path) -> None:
    from gpt4all_ray.experiment.report import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lengths = [r["response_tokens"] for r in table]
    for ax, key, title in (
        (axes[0], "loss", "per response token (ours)"),
        (axes[1], "gpt4all_loss", "over max_length - 1 positions (GPT4All)"),
    ):
        ax.scatter(lengths, [r[key] for r in table], s=6)
        ax.set_xlabel("response tokens")
        ax.set_ylabel("per-example loss")
        ax.set_title(title)
    _save(fig, path)


def summary_markdown(result: dict[str, Any], table: list[dict[str, Any]], checkpoint: Path) -> str:
    probes = result["probes"]
    lines = [
        f"# Analysis of {checkpoint}",
        "",
        f"Data: {result['data']}: {len(table)} examples; {result['cleaning']}.",
        "",
    ]
    ppl = result["perplexity"]
    lines += [
        f"Perplexity over response tokens: fine-tuned {ppl['tuned']:.2f}"
        + (f", base {ppl['base']:.2f}" if "base" in ppl else "")
        + ".",
        "",
    ]
    if result.get("self_instruct"):
        si = result["self_instruct"]
        base = f", base {si['base_perplexity']:.2f}" if "base_perplexity" in si else ""
        lines += [
            f"Self-instruct ({si['path']}, {si['instances']} instances): "
            f"perplexity fine-tuned {si['perplexity']:.2f}{base}.",
            "",
        ]
    if probes:
        names = ("stop_rate", "mean_new_tokens", "repetition_rate", "exact_match")
        lines += [
            f"Generation probes ({result['probe_prompts']} prompts, greedy, "
            f"up to {result['max_new_tokens']} new tokens):",
            "",
        ]
        lines += ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for which, scores in probes.items():
            lines.append(f"| {which} | " + " | ".join(f"{scores.get(n, math.nan):.3f}" for n in names) + " |")
        lines.append("")
    bias = result["length_bias"]
    base = f"; the base model's loss per response token {bias['base_loss']:+.2f}" if "base_loss" in bias else ""
    lines += [
        f"Length bias (Spearman rank correlation with response tokens): loss per response token {bias['loss']:+.2f}; "
        f"GPT4All's per-sequence loss {bias['gpt4all_loss']:+.2f}{base}. Across sources a correlation can be real "
        "difficulty (long rows may be harder); GPT4All's measure grows with length even where each token is "
        "equally hard.",
        "",
    ]
    for key, title in (
        ("source", "Loss by source"),
        ("prompt_type", "Loss by prompt type (the 15 highest, 3+ examples)"),
    ):
        groups = result[f"by_{key}"]
        if key == "prompt_type":
            groups = [g for g in groups if g["examples"] >= 3][:15]
        lines += [
            f"## {title}",
            "",
            f"| {key} | examples | mean loss | base mean loss | in the top 10% |",
            "|---|---|---|---|---|",
        ]
        for g in groups:
            base = "" if g["base_mean_loss"] is None else f"{g['base_mean_loss']:.3f}"
            lines.append(f"| {g[key]} | {g['examples']} | {g['mean_loss']:.3f} | {base} | {g['in_top_decile']} |")
        lines.append("")
    lines += [
        f"## The {TOP} highest-loss examples",
        "",
        "| loss | source | prompt type | response tokens | prompt |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(table, key=lambda r: -r["loss"])[:TOP]:
        prompt = r["prompt"].replace("|", "\\|").replace("\n", " ")[:80]
        lines.append(f"| {r['loss']:.3f} | {r['source']} | {r['prompt_type']} | {r['response_tokens']} | {prompt} |")
    lines += ["", "![loss map](loss_map.png)", "", "![loss by length](loss_by_length.png)", ""]
    return "\n".join(lines)


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from gpt4all_ray.data.sources import load_rows
    from gpt4all_ray.inspection.evaluate import load_checkpoint
    from gpt4all_ray.inspection.losses import map_2d, perplexity, prompt_type, spearman

    torch.manual_seed(0)
    inference = args.inference
    model, tokenizer, cfg = load_checkpoint(args.checkpoint, inference)
    cfg = dataclasses.replace(cfg, probe_max_new_tokens=args.max_new_tokens)
    if args.data is not None:  # another data set: no exact answers unless named
        cfg = dataclasses.replace(cfg, data=args.data, exact_answer_sources=args.exact_sources or "")
    elif args.exact_sources is not None:
        cfg = dataclasses.replace(cfg, exact_answer_sources=args.exact_sources)
    rows, label, cleaning = load_analysis_rows(cfg, args.data, args.limit)
    models = {"tuned": model} | ({} if args.no_base else {"base": base_of(cfg, tokenizer, inference)})
    scored, encoded = {}, None
    for which, m in models.items():
        scored[which], encoded = score_model(m, tokenizer, cfg, rows, inference)
    maps = {which: map_2d([e.embedding for e in losses]) for which, losses in scored.items()}
    table = []
    for i, row in enumerate(rows):
        tuned = scored["tuned"][i]
        entry = {
            "prompt": row["prompt"],
            "response": row["response"],
            "source": row["source"],
            "prompt_type": prompt_type(row["prompt"]),
            "tokens": tuned.tokens,
            "response_tokens": tuned.response_tokens,
            "loss": tuned.loss,
            "gpt4all_loss": tuned.gpt4all_loss,
            "base_loss": scored["base"][i].loss if "base" in scored else None,
        }
        for which, points in maps.items():
            entry[f"{which}_x"], entry[f"{which}_y"] = points[i]
        table.append(entry)
    out = args.out or args.checkpoint.with_name(args.checkpoint.name + "-analysis")
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table), out / "examples.parquet")

    finite = sorted(r["loss"] for r in table if math.isfinite(r["loss"]))
    top_cut = finite[int(0.9 * (len(finite) - 1))] if finite else math.inf
    dropped = ", ".join(f"{len(where)} as {reason}" for reason, where in sorted(cleaning.dropped.items()))
    result: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "device": inference.device,
        "dtype": inference.dtype,
        "data": label,
        "cleaning": f"{cleaning.rows_in} rows in, dropped: {dropped or 'none'}; "
        f"{encoded.truncated if encoded else 0} truncated to max_length",
        "perplexity": {which: perplexity(losses) for which, losses in scored.items()},
        "probe_prompts": min(args.probes, len(rows)),
        "max_new_tokens": args.max_new_tokens,
        "probes": {which: probe_scores(m, tokenizer, cfg, rows, args.probes, inference) for which, m in models.items()}
        if args.probes
        else {},
        "length_bias": {
            key: spearman([r[key] for r in table], [float(r["response_tokens"]) for r in table])
            for key in ("loss", "gpt4all_loss", "base_loss")
            if table and table[0][key] is not None
        },
        "by_source": by_group(table, "source", top_cut),
        "by_prompt_type": by_group(table, "prompt_type", top_cut),
    }
    if args.self_instruct:
        instances = load_rows(args.self_instruct, SELF_INSTRUCT)
        si: dict[str, Any] = {"path": str(args.self_instruct), "instances": len(instances)}
        si["perplexity"] = perplexity(score_model(model, tokenizer, cfg, instances, inference)[0])
        if "base" in models:
            si["base_perplexity"] = perplexity(score_model(models["base"], tokenizer, cfg, instances, inference)[0])
        result["self_instruct"] = si
    plot_maps(table, out / "loss_map.png", "base" in models)
    plot_length(table, out / "loss_by_length.png")
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    (out / "summary.md").write_text(summary_markdown(result, table, args.checkpoint))
    result["out"] = str(out)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.checkpoint / "trial_config.json").is_file():
        print(f"error: {args.checkpoint}: not a gpt4all-ray checkpoint (no trial_config.json)", file=sys.stderr)
        return 2
    for flag, path in (("--data", args.data), ("--self-instruct", args.self_instruct)):
        if path is not None and not Path(path).exists():
            print(f"error: {flag} {path}: no such file or folder", file=sys.stderr)
            return 2
    try:
        result = analyze(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Analysis: {result['out']}/summary.md")
    ppl = result["perplexity"]
    print("Perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))
    for which, scores in result["probes"].items():
        print(f"Probes ({which}): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    if "self_instruct" in result:
        print(f"Self-instruct perplexity: {result['self_instruct']['perplexity']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
