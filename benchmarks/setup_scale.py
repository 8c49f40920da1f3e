"""A worker's model load at GPT-J-6B's width: peak host memory and seconds of today's load (fp32)
against the candidate of issue 26 (load in the training dtype), side by side in one run.

    python benchmarks/setup_scale.py model [--layers 3] [--precision bf16] [--repeats 3]
        [--format safetensors|bin] [--out FILE]

The model: a GPT-J with GPT-J-6B's width (n_embd 4096, 16 heads, rotary_dim 64, vocabulary
50400, 2048 positions) and `--layers` blocks (3 make about 1.0B parameters), saved in Hugging
Face format in fp32, as GPT-J-6B's main revision is, in a temporary folder (never committed).
Each load runs in a fresh process; the arms alternate, `--repeats` times:

  fp32            gpt4all_ray.train.model.base_model: the worker's load (fp32 whatever the
                  training precision; DeepSpeed casts the module afterwards)
  training_dtype  the candidate: the same from_pretrained at `--precision`'s dtype, then
                  fit_embeddings

Measured from the load through what DeepSpeed does next at that precision (module.to(dtype)) and
one read of every weight (as the first step makes): transformers maps a safetensors checkpoint
lazily, so a load alone can look free while its pages are paid at the first use.
Metric: the peak resident memory above the process's resident memory just before the load
(torch and transformers already imported), over the weights' bytes in the training dtype, sampled
every 5 ms: all resident memory (rss) and its anonymous part (anon; the rest is the checkpoint's
memory-mapped file pages, shared by a node's workers through the page cache). Goal: <= 1.3 at
bf16. Seconds: the load, and the load with the cast and read.
The data half of issue 26 (tokenize once per experiment, 400,000 rows) is not measured here yet.
"""

from __future__ import annotations

import argparse
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
        if arm == "fp32":
            model, _ = base_model(TrialConfig(model=folder, precision=precision), VocabularyOnly())
        else:
            from transformers import AutoConfig

            config = fused_gelu(AutoConfig.from_pretrained(folder))
            model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=DTYPES[precision])
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
    p.add_argument("part", choices=["model"])
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--precision", choices=sorted(BYTES), default="bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--format", choices=["safetensors", "bin"], default="safetensors", help="the checkpoint's file format"
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = model_benchmark(args)
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
