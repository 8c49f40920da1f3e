"""Does a setting of the embedded default overfit as GPT4All's full fine-tunes did (validation loss
rising after an early best while training loss keeps falling)? Figure 3's divergence stopper can
only save compute where trials do.

    python benchmarks/overfit_probe.py            # the cases below, about 2 minutes on 2 cores
    python benchmarks/overfit_probe.py --case '{"model": "tiny-gptj-wide", "data_rows": 400,
        "val_fraction": 0.25, "learning_rate": 1e-3, "epochs": 8}'     # these cases instead

Each case runs the product's worker loop (`gpt4all_ray.train.loop.train`, one rank, no Ray) in a
fresh process on the embedded data and prints validation / training loss at each epoch end. A
case, and a --case (JSON, repeatable), sets TrialConfig fields over BASE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from gpu_worker import free_port  # this folder is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]

# The embedded default's fixed settings (search_spaces/tiny_cpu.yaml), one rank.
BASE = {
    "model": "tiny-gptj",
    "method": "full",
    "data": "embedded",
    "max_length": 128,
    "per_device_batch": 8,
    "global_batch": 16,
    "zero_stage": 0,
    "precision": "fp32",
    "seed": 0,
    "warmup_steps": 10,
    "lr_schedule": "constant_with_warmup",
    "stop_on_divergence": False,  # every epoch, to see the whole curve
}
WIDE = {"model": "tiny-gptj-wide"}  # 128 wide, 4 layers, MLP 512; the default is 64 wide, 2 layers, MLP 256
CASES = [
    {"data_rows": 2400, "val_fraction": 0.05, "learning_rate": 5e-3, "epochs": 6},  # the default's data
    {"data_rows": 800, "val_fraction": 0.2, "learning_rate": 1e-2, "epochs": 6},
    {"data_rows": 800, "val_fraction": 0.2, "learning_rate": 3e-3, "epochs": 6} | WIDE,
    {"data_rows": 400, "val_fraction": 0.25, "learning_rate": 3e-3, "epochs": 6},
    {"data_rows": 400, "val_fraction": 0.25, "learning_rate": 3e-3, "epochs": 6} | WIDE,
    {"data_rows": 400, "val_fraction": 0.25, "learning_rate": 1e-2, "epochs": 6} | WIDE,
]

CASE_SCRIPT = """
import json, sys, time
case = json.loads(sys.argv[1])
from gpt4all_ray.config import TrialConfig
from gpt4all_ray.train.loop import train
started = time.perf_counter()
class Printer:
    def report(self, evaluation, checkpoint_dir):
        if evaluation.epoch_end:
            print("EPOCH " + json.dumps({"epoch": evaluation.epoch, "val": evaluation.val_loss,
                  "train": evaluation.train_loss, "s": time.perf_counter() - started}), flush=True)
train(TrialConfig(**case), Printer(), threads=2)
"""


def run_case(case: dict) -> list[dict]:
    env = os.environ | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env |= {"MASTER_PORT": str(free_port()), "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", CASE_SCRIPT, json.dumps(BASE | case)], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("EPOCH ")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", type=json.loads, help="a case as JSON (repeatable); default: CASES")
    args = p.parse_args()
    print("| rows (val share) | model | lr (schedule) | val / train loss each epoch | best at | rise after best | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in args.case or CASES:
        epochs = run_case(case)
        vals = [e["val"] for e in epochs]
        best = min(range(len(vals)), key=vals.__getitem__)
        rise = vals[-1] / vals[best] - 1
        curve = " ".join(f"{e['val']:.3f}/{e['train']:.3f}" for e in epochs)
        model = "128 wide, 4 layers" if case.get("model") == "tiny-gptj-wide" else "default (64, 2 layers)"
        lr = f"{case['learning_rate']:g} ({case.get('lr_schedule', BASE['lr_schedule'])})"
        print(
            f"| {case['data_rows']} ({case['val_fraction']:.0%}) | {model} | {lr} | {curve} "
            f"| {best + 1} | {rise:+.1%} | {epochs[-1]['s']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
