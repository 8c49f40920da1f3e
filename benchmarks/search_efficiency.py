"""Search efficiency: the product's search (TPE + divergence stopper) against random search with
no early stopping, on the embedded default, several seeds, side by side in one run.

    python benchmarks/search_efficiency.py --out /tmp/bench-search [--seeds 0,1,2,3,4]

Per seed, both arms run `python -m gpt4all_ray.tune` on search_spaces/tiny_cpu.yaml with
tune.seed = seed; the baseline sets tune.searcher: random and fixed.stop_on_divergence: false.
TPE's first startup_trials draws are the random sampler's, so each pair starts alike. The runs
share one `ray start --head` cluster (started here, stopped at the end), as on a cluster.

Figures, from the stored experiments alone:
- compute to reach a target validation loss, in trial-epochs and worker-seconds (trials run one at
  a time, so compute is counted in start order up to the first evaluation at or under the target).
  Target: the median over seeds of random search's final best. Ratio ours / random per seed, and
  its median (a run that never reaches the target spent infinite compute: 0 when only ours
  reached it, inf when only random search did, 1 when neither did);
- the divergence stopper replayed on random search's full curves (same trials, same policy as the
  product's): the fraction of trial-epochs it saves and its regret (best loss with stopping minus
  best loss without, per seed; it must be 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARMS = ("ours", "random")


@dataclass
class Evaluation:
    trial: str
    epochs: float
    """Trial-epochs the search had spent when this evaluation was made (earlier trials included)."""
    worker_s: float
    val_loss: float


def arm_space(out: Path, arm: str, seed: int) -> Path:
    raw = yaml.safe_load((REPO / "search_spaces" / "tiny_cpu.yaml").read_text())
    raw["name"] = f"{arm}-s{seed}"
    raw["tune"]["seed"] = seed
    if arm == "random":
        raw["tune"]["searcher"] = "random"
        raw["fixed"]["stop_on_divergence"] = False
    path = out / f"{arm}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def search_curve(exp_dir: Path, workers: int) -> tuple[list[Evaluation], list[list[tuple[float, float]]]]:
    """Every evaluation of the experiment with the compute spent up to it; and each trial's
    (epoch progress, val loss) curve."""
    from gpt4all_ray.experiment import stored_trials
    from gpt4all_ray.results import evaluations

    spent_epochs = spent_s = 0.0
    points, curves = [], []
    for trial in stored_trials(exp_dir):  # Tune's start order
        reported = evaluations(trial.history)
        for h in reported:
            seconds = float(h["time_total_s"]) * workers
            points.append(
                Evaluation(trial.trial_id, spent_epochs + h["epoch_progress"], spent_s + seconds, h["val_loss"])
            )
        curves.append([(float(h["epoch_progress"]), float(h["val_loss"])) for h in reported])
        if reported:
            spent_epochs += float(reported[-1]["epoch_progress"])
            spent_s += float(reported[-1]["time_total_s"]) * workers
    return points, curves


def to_target(points: list[Evaluation], target: float) -> tuple[float, float]:
    for p in points:
        if p.val_loss <= target:
            return p.epochs, p.worker_s
    return math.inf, math.inf


def ratio(ours: float, baseline: float) -> float:
    """Compute to target, ours over the baseline's; a run that never reaches the target spent
    infinite compute on it: 0 when only ours reached it, inf when only the baseline did, and 1
    (a tie) when neither did."""
    if math.isinf(ours) and math.isinf(baseline):
        return 1.0
    return ours / baseline


def replay_stopper(curves: list[list[tuple[float, float]]], policy: Any) -> tuple[float, float, float, float]:
    """(trial-epochs without stopping, with stopping, best loss without, best loss with)."""
    full = stopped = 0.0
    best_full = best_stopped = math.inf
    for curve in curves:
        if not curve:
            continue
        losses, epochs = [loss for _, loss in curve], [e for e, _ in curve]
        cut = len(curve)
        for i in range(1, len(curve) + 1):
            if policy.decide(losses[:i], epochs[:i]).stop:
                cut = i
                break
        full += epochs[-1]
        stopped += epochs[cut - 1]
        best_full = min(best_full, *losses)
        best_stopped = min(best_stopped, *losses[:cut])
    return full, stopped, best_full, best_stopped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    args = p.parse_args()
    from gpt4all_ray.config import load_spec
    from gpt4all_ray.divergence import DivergencePolicy

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [ray, "start", "--head", "--num-cpus", str(os.cpu_count()), "--dashboard-host", "127.0.0.1"],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        for seed in seeds:
            for arm in ARMS:
                name = f"{arm}-s{seed}"
                if (out / name / "leaderboard.csv").is_file():  # kept from an earlier, interrupted run
                    continue
                cmd = [sys.executable, "-m", "gpt4all_ray.tune", "--space", str(arm_space(out, arm, seed))]
                log = (out / f"{name}.log").open("w")
                subprocess.run(
                    [*cmd, "--results-dir", str(out), "--name", name],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
                print(f"ran {name}", flush=True)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)

    spec = load_spec(REPO / "search_spaces" / "tiny_cpu.yaml")
    workers = spec.resources.workers_per_trial
    runs = {(arm, seed): search_curve(out / f"{arm}-s{seed}", workers) for arm in ARMS for seed in seeds}
    finals = {key: min(p.val_loss for p in points) for key, (points, _) in runs.items()}
    target = statistics.median(finals["random", s] for s in seeds)
    policy = DivergencePolicy.for_trial(spec.fixed)
    rows = []
    for seed in seeds:
        ours, rand = (to_target(runs[arm, seed][0], target) for arm in ARMS)
        full, stopped, best_full, best_stopped = replay_stopper(runs["random", seed][1], policy)
        rows.append(
            {
                "seed": seed,
                "ours_best": finals["ours", seed],
                "random_best": finals["random", seed],
                "ours_epochs_to_target": ours[0],
                "random_epochs_to_target": rand[0],
                "epochs_ratio": ratio(ours[0], rand[0]),
                "ours_worker_s_to_target": ours[1],
                "random_worker_s_to_target": rand[1],
                "worker_s_ratio": ratio(ours[1], rand[1]),
                "ours_total_epochs": max(p.epochs for p in runs["ours", seed][0]),
                "random_total_epochs": full,
                "replayed_stopper_epochs": stopped,
                "stopper_regret": best_stopped - best_full,
            }
        )
    ratios = sorted(r["epochs_ratio"] for r in rows)
    seconds = sorted(r["worker_s_ratio"] for r in rows)
    saved = 1 - sum(r["replayed_stopper_epochs"] for r in rows) / sum(r["random_total_epochs"] for r in rows)
    summary = {
        "target_val_loss": target,
        "median_epochs_ratio": ratios[len(ratios) // 2],
        "median_worker_s_ratio": seconds[len(seconds) // 2],
        "stopper_epochs_saved_fraction": saved,
        "max_stopper_regret": max(r["stopper_regret"] for r in rows),
        "rows": rows,
    }
    (out / "search_efficiency.json").write_text(json.dumps(summary, indent=2))
    print(f"target val_loss {target:.4f} (median of random search's final bests over seeds {seeds})")
    print(
        "| seed | best ours | best random | trial-epochs to target ours / random | ratio "
        "| worker-s ours / random | ratio | stopper regret |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['ours_best']:.4f} | {r['random_best']:.4f} | {r['ours_epochs_to_target']:.2f} / "
            f"{r['random_epochs_to_target']:.2f} | {r['epochs_ratio']:.2f} | {r['ours_worker_s_to_target']:.0f} / "
            f"{r['random_worker_s_to_target']:.0f} | {r['worker_s_ratio']:.2f} | {r['stopper_regret']:.4f} |"
        )
    print(
        f"median ratio: trial-epochs {summary['median_epochs_ratio']:.2f}, "
        f"worker-seconds {summary['median_worker_s_ratio']:.2f}; "
        f"divergence stopper replayed on random search's trials saves {saved:.1%} of trial-epochs, "
        f"largest regret {summary['max_stopper_regret']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
