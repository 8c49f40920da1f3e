"""Model FLOPs utilisation of the product's worker loop on one GPU, GPT-J-shaped.

    python benchmarks/gpu_worker.py --out DIR            # on a GPU machine (one H100 here)
    python benchmarks/gpu_worker.py --out DIR --tiny     # the same path on CPU, as a smoke test

Builds a GPT-J model with GPT-J-6B's width (4096, 16 heads, rotary 64, MLP 16384, vocab 50400)
and fewer layers, saves it as a Hugging Face folder, and fine-tunes it by that path through
`gpt4all_ray.train.loop.train` (the code Ray Train workers run; no Ray here) on long instruction rows,
one fresh process per case. Each case reports the worker's own metrics: model FLOPs utilisation
over the last log window (steady state), non-pad tokens/s, gradient norm, loss scale (fp16), and
the validation loss, which a reload of the saved checkpoint must reproduce where asked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASE_SCRIPT = """
import json, os, shutil, sys
from gpt4all_ray.config import TrialConfig
from gpt4all_ray.train.loop import train

out, cfg = sys.argv[1], TrialConfig(**json.loads(sys.argv[2]))

class FolderReporter:
    def report(self, evaluation, checkpoint_dir):
        metrics = evaluation.to_metrics()
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\\n")
        exported = checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "trial_config.json"))
        if cfg.method == "lora" and exported:  # a full 6B-wide export is gigabytes: not kept
            shutil.copytree(checkpoint_dir, os.path.join(out, "checkpoint"), dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("resume"))

def run(on_step=None):
    import contextlib
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    # SDPA=efficient: attention by the memory-efficient kernel only (not cuDNN's)
    only = sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]) if os.environ.get("SDPA") == "efficient" else None
    with only or contextlib.nullcontext():
        train(cfg, FolderReporter(), tb_dir=os.path.join(out, "tb"), threads=4, on_step=on_step)

if os.environ.get("PROFILE"):  # where the time goes: kernels and CPU ops over optimizer steps 4-6
    import torch
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    steps = torch.profiler.schedule(wait=3, warmup=1, active=3, repeat=1)
    with torch.profiler.profile(activities=acts, schedule=steps) as prof:
        run(on_step=lambda *_: prof.step())
    with open(os.path.join(out, "profile.txt"), "a") as f:
        try:
            for key in ("self_device_time_total", "cpu_time_total"):
                f.write(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90) + "\\n")
        except AssertionError as e:  # fewer steps than the schedule's 7
            f.write(f"no profile: {e}\\n")
else:
    run()

import torch
if torch.cuda.is_available():
    with open(os.path.join(out, "memory.json"), "w") as f:
        stats = torch.cuda.memory_stats()  # retries: the allocator freed its cache to find room
        json.dump({"max_allocated_gib": round(stats["allocated_bytes.all.peak"] / 2**30, 1),
                   "alloc_retries": stats["num_alloc_retries"]}, f)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model_folder(folder: Path, tiny: bool, layers: int) -> None:
    """A GPT-J of GPT-J-6B's width, random weights, with the embedded tokenizer beside it."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    from gpt4all_ray.config import TrialConfig
    from gpt4all_ray.data import build_tokenizer, load_split

    tokenizer = build_tokenizer(load_split(TrialConfig(data_rows=2400)))
    shape = dict(n_embd=64, n_head=4, rotary_dim=16, n_inner=256) if tiny else {}
    config = GPTJConfig(
        vocab_size=50400,
        n_positions=2048,
        n_layer=layers,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    GPTJForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def variant_folder(base: Path, folder: Path, overrides: dict) -> None:
    """The base model with config fields changed that leave its weights as they are (such as the
    activation function): the weight files are hard links, only config.json differs."""
    folder.mkdir()
    for f in base.iterdir():
        if f.name != "config.json":
            os.link(f, folder / f.name)
    config = json.loads((base / "config.json").read_text()) | overrides
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_long_rows(path: Path, rows: int) -> None:
    """Instruction rows whose responses join 2 to 40 generated responses: lengths spread up to
    and past max length, mean near GPT4All's 45% of it."""
    from gpt4all_ray.data.synthetic import generate_rows

    pool = generate_rows(rows * 8, seed=1)
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(rows):
            parts = rng.sample(pool, rng.randint(2, 40))
            response = " ".join(p["response"] for p in parts)
            f.write(json.dumps({"prompt": pool[i]["prompt"], "response": response, "source": "long"}) + "\n")


def run_case(name: str, cfg: dict, out: Path, profile: bool = False) -> dict:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)  # its metrics and events are appended to
    folder.mkdir(parents=True)
    env = (
        os.environ
        | {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        | ({"PROFILE": "1"} if profile else {})
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CASE_SCRIPT, str(folder), json.dumps(cfg)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    (folder / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"case": name, "error": (proc.stdout + proc.stderr)[-3000:], "wall_s": wall}
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    result = {"case": name, "wall_s": round(wall, 1)} | {
        k: last.get(k) for k in ("grad_norm", "loss_scale", "val_loss", "train_loss", "step")
    }
    result["val_losses"] = [m["val_loss"] for m in metrics]
    if (folder / "memory.json").is_file():
        result |= json.loads((folder / "memory.json").read_text())
    result |= steady_state(folder / "tb")
    return result


def steady_state(tb_dir: Path) -> dict:
    """Median over the log windows, leaving out the first (warm-up, allocator growth) and the last
    (a partial window at the epoch's end), as the worker wrote them to TensorBoard."""
    import statistics

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    out = {}
    for tag in ("train/mfu", "train/tokens_per_s", "train/loss"):
        if tag in events.Tags()["scalars"]:
            values = [e.value for e in events.Scalars(tag)]
            out[tag.removeprefix("train/") + "_windows"] = values
            middle = values[1:-1] or values
            out[tag.removeprefix("train/") + "_steady"] = statistics.median(middle)
    return out


def reload_loss(folder: Path) -> float:
    from gpt4all_ray.inspection.device import Inference
    from gpt4all_ray.inspection.evaluate import validation_loss

    return validation_loss(folder / "checkpoint", Inference("cpu", "fp32", batch_size=4))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="tiny width, CPU: check the script itself")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--model-set", default="{}", help='JSON over config.json, e.g. {"activation_function": ...}')
    p.add_argument("--cases", default="full_bf16,lora_bf16,full_fp16,lora_zero3_gc_bf16")
    p.add_argument("--rows", type=int, default=700)
    p.add_argument("--set", default="{}", help="JSON of trial settings over the base, e.g. collate")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    overrides = json.loads(args.model_set)
    suffix = "".join(f"_{v}" for v in overrides.values())
    base_model_dir, data = out / f"gptj_shaped_{args.layers}l", out / "long_rows.jsonl"
    if not (base_model_dir / "config.json").is_file():  # kept between invocations on one --out
        build_model_folder(base_model_dir, args.tiny, args.layers)
    model_dir = base_model_dir.with_name(base_model_dir.name + suffix)
    if not (model_dir / "config.json").is_file():
        variant_folder(base_model_dir, model_dir, overrides)
    write_long_rows(data, args.rows)
    base = {
        "model": str(model_dir),
        "data": str(data),
        "val_fraction": 0.03,
        "max_length": 128 if args.tiny else 1024,
        "per_device_batch": 2 if args.tiny else 8,
        "global_batch": 8 if args.tiny else 32,
        "epochs": 1,
        "learning_rate": 1e-4,
        "lr_schedule": "constant_with_warmup",
        "warmup_steps": 2,
        "weight_decay": 0.01,
        "zero_stage": 2,
        "log_every_steps": 2,
    } | json.loads(args.set)
    cases = {
        "full_bf16": {"method": "full", "precision": "bf16"},
        "lora_bf16": {"method": "lora", "precision": "bf16"},
        "full_fp16": {"method": "full", "precision": "fp16"},
        "lora_zero3_gc_bf16": {"method": "lora", "precision": "bf16", "zero_stage": 3, "gradient_checkpointing": True},
    }
    if args.tiny:  # fp16 needs a GPU
        cases["full_fp16"]["precision"] = "fp32"
    results = []
    for name in args.cases.split(","):
        folder_name = name + suffix + ("_profile" if args.profile else "")
        folder_name += f"_sdpa_{os.environ['SDPA']}" if os.environ.get("SDPA") else ""
        folder_name += f"_mb{base['per_device_batch']}" if base["per_device_batch"] != 32 else ""
        folder_name += f"_{args.layers}l" if args.layers != 4 else ""
        result = run_case(folder_name, base | cases[name], out, args.profile)
        if "error" not in result and name.startswith("lora"):
            result["reloaded_val_loss"] = reload_loss(out / folder_name)
        result |= {"layers": args.layers, "model_set": overrides, "set": json.loads(args.set)}
        shutil.rmtree(out / folder_name / "checkpoint", ignore_errors=True)  # a 6B-wide model fills disks
        print(json.dumps(result), flush=True)
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        results.append(result)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    summary = {"device": device, "layers": args.layers, "model_set": overrides, "tiny": args.tiny, "base": base}
    summary["results"] = results
    (out / "gpu_worker.json").write_text(json.dumps(summary, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
