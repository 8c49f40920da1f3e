"""Storage a finished search leaves behind: every trial's resume state kept (before issue 26, and
now with tune.keep_resume_state) against the default (each ended trial keeps its exported model
only), the same search otherwise, side by side in one run.

    python benchmarks/checkpoint_storage.py --out FILE [--space tiny_cpu] [--seeds 0]

Each arm runs `python -m gpt4all_ray.tune` on the space as a user would (a local Ray instance
started by the command), with tune.seed set per seed, so both arms sample the same trials. Metric,
fixed before the run: bytes under the experiment folder after the search, dropped over kept
(issue 26's goal: <= 0.5), reported per seed with the breakdown (Ray's storage and the rest,
checkpoints with resume state). Check: the dropped arm's best checkpoint (best/) reloads to its
recorded best validation loss (`gpt4all-ray evaluate`, relative 1e-4), as the kept arm's does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = {"kept": "true", "dropped": "false"}


def run_arm(space: str, seed: int, keep: str, results: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from gpt4all_ray.experiment.storage import storage_used
    from gpt4all_ray.inspection.evaluate import validation_loss

    name = f"keep-{keep}-seed-{seed}"
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--space", space, "--results-dir", str(results)]
    command += ["--name", name, "--set", f"tune.keep_resume_state={keep}", "--set", f"tune.seed={seed}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
    exp = results / name
    used = storage_used(exp, str(exp / "ray"))
    best = json.loads((exp / "best.json").read_text())
    reloaded = validation_loss(exp / "best")
    return {
        "experiment_bytes": sum(f.stat().st_size for f in exp.rglob("*") if f.is_file()),
        "ray_bytes": used.ray_bytes,
        "checkpoints": used.checkpoints,
        "with_resume_state": used.with_resume_state,
        "best_val_loss": best["best_val_loss"],
        "reloaded_val_loss": reloaded,
        "reloads": abs(reloaded - best["best_val_loss"]) <= 1e-4 * abs(best["best_val_loss"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="tiny_cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="checkpoint_storage_") as tmp:
        for seed in args.seeds:
            arms = {arm: run_arm(args.space, seed, keep, Path(tmp)) for arm, keep in ARMS.items()}
            ratio = arms["dropped"]["experiment_bytes"] / arms["kept"]["experiment_bytes"]
            runs.append({"seed": seed, "arms": arms, "dropped_over_kept": ratio})
            print(json.dumps(runs[-1]), flush=True)
    ratios = [r["dropped_over_kept"] for r in runs]
    result = {
        "benchmark": "checkpoint_storage",
        "command": " ".join(sys.argv),
        "space": args.space,
        "metric": "bytes under the experiment folder after the search, dropped / kept",
        "goal": "<= 0.5, the best checkpoint reloading to its recorded loss",
        "runs": runs,
        "dropped_over_kept": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
        "every_best_reloads": all(arm["reloads"] for r in runs for arm in r["arms"].values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["dropped_over_kept"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
