"""A worker's setup at GPT4All's scale (issue 26): its data (rows, split, tokenizer, encoding)
and its model load, peak host memory and seconds.

    python benchmarks/setup_scale.py data [--rows 400000] [--world 8] [--global-batch 256] [--out FILE]
    python benchmarks/setup_scale.py model [--layers 3] [--precision bf16] [--repeats 3]
        [--format safetensors|bin] [--out FILE]

data: a GPT4All-shaped JSONL (prompt/response/source; `--rows` rows, unique; response lengths
drawn from a log-normal so that rows average about 460 tokens at max_length 1024 with a tail over
it; generated in a temporary folder, never committed) and a byte-level BPE tokenizer of 8,192
tokens trained on a sample of it, saved as a model folder's tokenizer. Three arms, each in a
fresh process, in one run:

  per_row      a worker's data setup before the cache (61d36cd, kept here as it was): load_split,
               load_tokenizer, then two tokenizer calls a row for every training and validation row
  build        the experiment's one build (data/cache.py prepare on an empty cache folder): the
               same rows, batched tokenizer calls, written as mapped token arrays
  later_trial  one worker of a later trial (`--world` workers): prepare on the built cache (key
               check, map), then its share of one epoch read as training reads it (rows_of_step
               over the epoch's order, each row made an Example)

Metrics, fixed before the run (issue 26's goals): the build's speed-up, per_row seconds / build
seconds (>= 5); the later trial's setup seconds, prepare alone (<= 5); the later trial's peak
anonymous memory above its start, over its epoch share's token bytes at 4 bytes a token (<= 2;
anonymous: what the worker holds itself. All resident memory, which adds the mapped file pages
the page cache shares between a node's workers, is reported beside it). The build and per_row
arms must encode the same number of rows and tokens (checked).

The model: a GPT-J with GPT-J-6B's width (n_embd 4096, 16 heads, rotary_dim 64, vocabulary
50400, 2048 positions) and `--layers` blocks (3 make about 1.0B parameters), saved in Hugging
Face format in fp32, as GPT-J-6B's main revision is, in a temporary folder (never committed).
Each load runs in a fresh process; the arms alternate, `--repeats` times:

  fp32            the worker's load before issue 26 (61d36cd, kept here): from_pretrained in
                  fp32 whatever the training precision, then fit_embeddings; DeepSpeed casts
                  the module afterwards
  training_dtype  gpt4all_ray.train.model.base_model: the worker's load now, at `--precision`'s
                  dtype

Measured from the load through what DeepSpeed does next at that precision (module.to(dtype)) and
one read of every weight (as the first step makes): transformers maps a safetensors checkpoint
lazily, so a load alone can look free while its pages are paid at the first use.
Metric: the peak resident memory above the process's resident memory just before the load
(torch and transformers already imported), over the weights' bytes in the training dtype, sampled
every 5 ms: all resident memory (rss) and its anonymous part (anon; the rest is the checkpoint's
memory-mapped file pages, shared by a node's workers through the page cache). Goal: <= 1.3 at
bf16. Seconds: the load, and the load with the cast and read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GPTJ_6B_WIDTH = {"n_embd": 4096, "n_head": 16, "rotary_dim": 64, "vocab_size": 50400, "n_positions": 2048}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def memory() -> dict[str, int]:
    """This process's resident memory in bytes: all of it, and the anonymous part (what the
    process itself holds; the rest is file pages, such as a memory-mapped checkpoint, which the
    page cache shares between the workers of a node and can drop)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon"}
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split()[0] if line.strip() else ""
        if key in fields:
            found[fields[key]] = int(line.split()[1]) * 1024
    return found


class PeakSampler:
    """The highest resident memory seen while a block runs, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        import threading

        self.peak = memory()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            now = memory()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        now = memory()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}


def save_model(folder: Path, layers: int, file_format: str) -> int:
    """The fp32 checkpoint; returns its parameter count."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    config = GPTJConfig(n_layer=layers, bos_token_id=50256, eos_token_id=50256, **GPTJ_6B_WIDTH)
    model = GPTJForCausalLM(config)
    if file_format == "safetensors":
        model.save_pretrained(folder)
    else:  # a pickled state dict, as older Hub repositories ship (transformers 5 writes safetensors only)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return sum(p.numel() for p in model.parameters())


class VocabularyOnly:
    """What fit_embeddings reads of a tokenizer: its size (GPT-J's) and a pad token inside it."""

    pad_token_id = 50399

    def __len__(self) -> int:
        return GPTJ_6B_WIDTH["vocab_size"]


def child(arm: str, folder: str, precision: str) -> dict[str, Any]:
    """One load in this process, measured."""
    sys.path.insert(0, str(REPO))
    import torch  # imported before the baseline is taken, as in a worker
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM

    from gpt4all_ray.config import TrialConfig
    from gpt4all_ray.train.model import base_model, fit_embeddings, fused_gelu

    DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

    before_load = memory()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        if arm == "training_dtype":
            model, _ = base_model(TrialConfig(model=folder, precision=precision), VocabularyOnly())
        else:
            from transformers import AutoConfig

            config = fused_gelu(AutoConfig.from_pretrained(folder))
            model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)
            fit_embeddings(model, VocabularyOnly())
        loaded_at = time.perf_counter()
        # What DeepSpeed does next with the module at this precision (bf16/fp16: module.to(dtype)),
        # and a read of every weight, as the first step makes: a lazily mapped checkpoint is paid here.
        model.to(DTYPES[precision])
        for parameter in model.parameters():
            parameter.data.max()  # a reduction: reads every page, allocates no copy
    seconds = time.perf_counter() - started
    return {
        "arm": arm,
        "seconds": seconds,
        "load_seconds": loaded_at - started,
        "before_load": before_load,
        "peak": sampler.peak,
        "after_load": memory(),
        "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    }


def run_arm(arm: str, folder: Path, precision: str) -> dict[str, Any]:
    code = f"import json, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import setup_scale; "
    code += f"print('RESULT ' + json.dumps(setup_scale.child({arm!r}, {str(folder)!r}, {precision!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


WORDS = 30_000
RESPONSE_LOG_MEDIAN = 4.2  # e^4.2: a 67-word median response; rows then average ~460 tokens
SOURCES = ("unified_chip2", "stackoverflow", "laion_oig", "gpteacher")


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """Unique GPT4All-like rows: a prompt of ~40 words, a response of log-normal length (a long
    tail), words from a Zipf-like vocabulary of pseudo-words."""
    import random

    rng = random.Random(seed)
    vocabulary = [f"w{rng.getrandbits(40):x}"[: rng.randint(3, 9)] for _ in range(WORDS)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(WORDS)))

    def words(n: int) -> str:
        return " ".join(rng.choices(vocabulary, cum_weights=cumulative, k=n))

    with path.open("w") as f:
        for i in range(rows):
            prompt = f"Question {i}: " + words(max(4, int(rng.gauss(40, 15))))
            response = words(max(8, int(rng.lognormvariate(RESPONSE_LOG_MEDIAN, 0.6))))
            f.write(json.dumps({"prompt": prompt, "response": response, "source": SOURCES[i % len(SOURCES)]}) + "\n")


def save_tokenizer(folder: Path, rows_file: Path, sample: int = 20_000) -> None:
    sys.path.insert(0, str(REPO))
    from gpt4all_ray.data.tokenizer import train_tokenizer

    texts = []
    with rows_file.open() as f:
        for line, _ in zip(f, range(sample), strict=False):
            row = json.loads(line)
            texts.append(row["prompt"] + "\n" + row["response"])
    train_tokenizer(texts, vocab_size=8192).save_pretrained(folder)


def per_row_encode(rows: list[Any], tokenizer: Any, max_length: int) -> tuple[int, int, int]:
    """The encoding a worker ran before the cache (61d36cd's encode_rows, length policy truncate):
    two tokenizer calls a row, the examples kept as Python lists. (rows, tokens, truncated)."""
    from gpt4all_ray.data.encode import IGNORE, PromptEncoder

    encode_prompt, eos = PromptEncoder(tokenizer, max_length), tokenizer.eos_token_id
    examples, truncated = [], 0
    for row in rows:
        prompt, _ = encode_prompt(row["prompt"])
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        if len(prompt) + len(response) + 1 <= max_length:
            examples.append((prompt + response + [eos], [IGNORE] * len(prompt) + response + [eos]))
        else:
            examples.append(((prompt + response)[:max_length], ([IGNORE] * len(prompt) + response)[:max_length]))
            truncated += 1
    return len(examples), sum(len(ids) for ids, _ in examples), truncated


def data_child(arm: str, folder: str, rows_file: str, cache: str, world: int, global_batch: int) -> dict[str, Any]:
    """One arm in this process, measured."""
    sys.path.insert(0, str(REPO))
    import torch  # noqa: F401  (a worker has torch and transformers imported before its data setup)
    import transformers  # noqa: F401

    from gpt4all_ray.config import TrialConfig
    from gpt4all_ray.data.cache import prepare

    cfg = TrialConfig(model=folder, data=rows_file, max_length=1024)
    before, result = memory(), {"arm": arm}
    with PeakSampler() as sampler:
        started = time.perf_counter()
        if arm == "per_row":
            from gpt4all_ray.data import load_split
            from gpt4all_ray.data.tokenizer import load_tokenizer

            data = load_split(cfg)
            tokenizer = load_tokenizer(cfg, data)
            rows, tokens, truncated = per_row_encode(data.train, tokenizer, cfg.max_length)
            per_row_encode(data.val, tokenizer, cfg.max_length)
            result |= {"train_rows": rows, "train_tokens": tokens, "truncated_rows": truncated}
        else:
            prepared = prepare(cfg, Path(cache))
            result |= {
                "built_here": prepared.built_here,
                "train_rows": len(prepared.train),
                "train_tokens": prepared.train.tokens,
                "truncated_rows": prepared.encoding.truncated,
            }
        result["seconds"] = time.perf_counter() - started
        if arm == "later_trial":
            result |= read_epoch_share(prepared.train, world, global_batch, cfg.seed)
            result["with_epoch_share_seconds"] = time.perf_counter() - started
    return result | {"before": before, "peak": sampler.peak}


def read_epoch_share(train: Any, world: int, global_batch: int, seed: int) -> dict[str, Any]:
    """Rank 0's rows of epoch 1, read as the loop reads them (loop.py epoch_order, rows_of_step)."""
    import torch

    from gpt4all_ray.train.loop import rows_of_step

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1000 + 1)).tolist()
    tokens = rows = 0
    for step in range(len(train) // global_batch):
        for row in rows_of_step(order, step, global_batch, 0, world):
            tokens += len(train[row].input_ids)
            rows += 1
    return {"share_rows": rows, "share_tokens": tokens, "world": world, "global_batch": global_batch}


def run_data_arm(arm: str, *args: Any) -> dict[str, Any]:
    code = f"import json, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import setup_scale; "
    plain = [str(a) if isinstance(a, Path) else a for a in args]
    code += f"print('RESULT ' + json.dumps(setup_scale.data_child({arm!r}, *{plain!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{arm}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def data_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpt4all_rows_") as tmp:
        folder, rows_file, cache = Path(tmp) / "model", Path(tmp) / "rows.jsonl", Path(tmp) / "cache"
        folder.mkdir()
        started = time.perf_counter()
        write_rows(rows_file, args.rows)
        save_tokenizer(folder, rows_file)
        prepared_s = time.perf_counter() - started
        arms = {}
        for arm in ("per_row", "build", "later_trial"):
            arms[arm] = run_data_arm(arm, folder, rows_file, cache, args.world, args.global_batch)
            print(json.dumps(arms[arm]), flush=True)
        file_bytes = rows_file.stat().st_size
        cache_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    later, build, per_row = arms["later_trial"], arms["build"], arms["per_row"]
    share_bytes = later["share_tokens"] * 4
    same = all(build[k] == per_row[k] for k in ("train_rows", "train_tokens", "truncated_rows"))
    return {
        "benchmark": "setup_scale data",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "jsonl_bytes": file_bytes,
        "cache_bytes": cache_bytes,
        "prepare_seconds": prepared_s,
        "arms": arms,
        "same_rows_and_tokens": same,
        "ratios": {
            "build_speedup": per_row["seconds"] / build["seconds"],
            "later_trial_setup_seconds": later["seconds"],
            "later_trial_anon_over_share_token_bytes": (later["peak"]["anon"] - later["before"]["anon"]) / share_bytes,
            "later_trial_rss_over_share_token_bytes": (later["peak"]["rss"] - later["before"]["rss"]) / share_bytes,
            "per_row_anon_over_train_token_bytes": (per_row["peak"]["anon"] - per_row["before"]["anon"])
            / (per_row["train_tokens"] * 4),
        },
        "goals": {
            "build_speedup": ">= 5",
            "later_trial_setup_seconds": "<= 5",
            "later_trial_anon_over_share_token_bytes": "<= 2",
        },
    }


def model_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gptj_wide_") as tmp:
        folder = Path(tmp)
        params = save_model(folder, args.layers, args.format)
        on_disk = sum(f.stat().st_size for f in folder.iterdir())
        files = sorted(f.name for f in folder.iterdir())
        weights = params * BYTES[args.precision]
        runs = []
        for repeat in range(args.repeats):
            for arm in ("fp32", "training_dtype"):
                run = run_arm(arm, folder, args.precision) | {"repeat": repeat}
                for kind in ("rss", "anon"):
                    run[f"{kind}_over_weights"] = (run["peak"][kind] - run["before_load"][kind]) / weights
                runs.append(run)
                print(json.dumps(run), flush=True)
    summary = {}
    for arm in ("fp32", "training_dtype"):
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            f"{kind}_over_weights": [min(ratios), statistics.median(ratios), max(ratios)]
            for kind in ("rss", "anon")
            for ratios in [[r[f"{kind}_over_weights"] for r in mine]]
        } | {
            "seconds": [min(r["seconds"] for r in mine), statistics.median(r["seconds"] for r in mine)],
            "dtypes": mine[0]["dtypes"],
        }
    return {
        "benchmark": "setup_scale model",
        "command": " ".join(sys.argv),
        "layers": args.layers,
        "parameters": params,
        "checkpoint_bytes_fp32": on_disk,
        "checkpoint_files": files,
        "precision": args.precision,
        "format": args.format,
        "weights_bytes_in_training_dtype": weights,
        "goal": "peak resident memory of the load / weights in the training dtype <= 1.3",
        "ratios": "[min, median, max] over repeats; rss: all resident memory, anon: without file pages",
        "runs": runs,
        "summary": summary,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["data", "model"])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--precision", choices=sorted(BYTES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="model: loads per arm")
    p.add_argument("--world", type=int, default=8, help="data: workers a trial (the later trial's share)")
    p.add_argument("--global-batch", type=int, default=256, help="data: rows an optimizer step, all workers")
    p.add_argument(
        "--format", choices=["safetensors", "bin"], default="safetensors", help="the checkpoint's file format"
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = data_benchmark(args) if args.part == "data" else model_benchmark(args)
    print(json.dumps(result.get("summary", result.get("ratios")), indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
