"""Search efficiency: the product's search against random search with no early stopping, on the
embedded default, several seeds, side by side in one run.

    python benchmarks/search_efficiency.py --out /tmp/bench-search [--seeds 0,1,2,3,4] [--arms ours,asha]
        [--trials 20]

Per seed, every arm runs `python -m gpt4all_ray.tune` on search_spaces/tiny_cpu.yaml (or --space) with
tune.seed = seed:
- ours: the default as it is (TPE + divergence stopper);
- gp: the default with tune.searcher gp (Optuna's Gaussian process instead of TPE);
- gp_asha: gp with tune.scheduler asha as well;
- asha: the default with tune.scheduler asha (the GPU spaces' setting: rungs at epochs 1 and 3);
- asha_x2: that with twice the trials, counted only up to the trial-epochs random search spent on
  the seed: the same compute budget, for a scheduler that stops trials early and so fits more in;
- random: the baseline, tune.searcher random, no scheduler, fixed.stop_on_divergence false.
TPE's and GP's first startup_trials draws are the random sampler's, so the arms of a seed start
alike. --trials sets every arm's budget (asha_x2 gets twice it); default: the space's 6.
The runs share one `ray start --head` cluster (started here, stopped at the end), as on a cluster.

Figures, from the stored experiments alone:
- compute to reach a target validation loss, in trial-epochs and worker-seconds (trials run one at
  a time, so compute is counted in start order up to the first evaluation at or under the target).
  Target: the median over seeds of random search's final best. Ratio arm / random per seed, and
  its median (a run that never reaches the target spent infinite compute: 0 when only the arm
  reached it, inf when only random search did, 1 when neither did);
- the divergence stopper and ASHA (the asha arm's settings) replayed on random search's full
  curves, the same trials in the same order: the fraction of trial-epochs each saves and its
  regret (best loss with it minus best loss without, per seed; the stopper's must be 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARMS = ("ours", "gp", "gp_asha", "asha", "asha_x2", "random")
CAPPED = "asha_x2"
"""Runs twice the trials, counted only up to the trial-epochs random search spent on the seed."""
BASELINE = "random"


Curve = list[tuple[float, float]]
"""One trial's (epoch progress, val loss) at each evaluation, in order."""


@dataclass
class Evaluation:
    trial: str
    epochs: float
    """Trial-epochs the search had spent when this evaluation was made (earlier trials included)."""
    worker_s: float
    val_loss: float


def arm_space(out: Path, arm: str, seed: int, trials: int | None = None, space: str = "tiny_cpu") -> Path:
    raw = yaml.safe_load((REPO / "search_spaces" / f"{space}.yaml").read_text())
    raw["name"] = f"{arm}-s{seed}"
    raw["tune"]["seed"] = seed
    if trials:
        raw["tune"]["num_trials"] = trials
    if arm.startswith("gp"):
        raw["tune"]["searcher"] = "gp"
    if "asha" in arm:
        raw["tune"]["scheduler"] = "asha"
    if arm == CAPPED:
        raw["tune"]["num_trials"] *= 2
    if arm == "random":
        raw["tune"].pop("scheduler", None)
        raw["tune"]["searcher"] = "random"
        raw["fixed"]["stop_on_divergence"] = False
    path = out / f"{arm}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def search_curve(exp_dir: Path, workers: int) -> tuple[list[Evaluation], list[Curve]]:
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


def judge(curve: Curve, policy: Any) -> Any:
    """The policy's Decision on a whole (non-empty) curve: decide() judges the history in order
    and stops at the first evaluation that ends the trial."""
    return policy.decide([loss for _, loss in curve], [e for e, _ in curve])


def replay_stopper(curves: list[Curve], policy: Any) -> tuple[float, float, float, float]:
    """(trial-epochs without stopping, with stopping, best loss without, best loss with)."""
    cuts = []
    for curve in curves:
        decision = judge(curve, policy) if curve else None
        cuts.append(decision.at if decision and decision.stop else len(curve))
    return replay_totals(curves, cuts)


def asha_milestones(grace: float, reduction: int, max_t: float) -> list[float]:
    """Ray's ASHA rungs (one bracket), lowest first: grace * reduction**k below max_t."""
    rungs = int(math.log(max_t / grace) / math.log(reduction) + 1)
    return sorted(grace * reduction**k for k in range(rungs) if grace * reduction**k < max_t)


def asha_cuts(curves: list[Curve], milestones: list[float], reduction: int) -> list[int]:
    """Ray's ASHAScheduler (one bracket, mode min) replayed on trials run one at a time, in order,
    on the running best loss: how many evaluations of each curve it lets run. At each evaluation,
    the highest rung at or below its epoch that the trial has not been recorded at is checked: the
    trial stops if its running best is above the (100 / reduction)th percentile of the earlier
    trials recorded there, and is recorded."""
    recorded: dict[float, list[float]] = {m: [] for m in milestones}
    cuts = []
    for curve in curves:
        cut, best, passed = len(curve), math.inf, set()
        for i, (epoch, loss) in enumerate(curve, start=1):
            best = min(best, loss)
            rung = next((m for m in reversed(milestones) if epoch >= m and m not in passed), None)
            if rung is None:
                continue
            passed.add(rung)
            earlier = list(recorded[rung])
            recorded[rung].append(best)
            if earlier and best > float(np.percentile(earlier, 100 / reduction)):
                cut = i
                break
        cuts.append(cut)
    return cuts


def replay_totals(curves: list[Curve], cuts: list[int]) -> tuple[float, float, float, float]:
    """Each curve cut after its cuts[i] evaluations: (trial-epochs whole, cut, best loss whole, cut)."""
    full = stopped = 0.0
    best_full = best_stopped = math.inf
    for curve, cut in zip(curves, cuts, strict=True):
        if not curve:
            continue
        full += curve[-1][0]
        stopped += curve[cut - 1][0]
        best_full = min(best_full, *(loss for _, loss in curve))
        best_stopped = min(best_stopped, *(loss for _, loss in curve[:cut]))
    return full, stopped, best_full, best_stopped


def run_arms(out: Path, arms: list[str], seeds: list[int], trials: int | None, space: str = "tiny_cpu") -> None:
    # A run with its leaderboard is kept from an earlier, interrupted invocation; the rest run.
    pending = [(s, a) for s in seeds for a in arms if not (out / f"{a}-s{s}" / "leaderboard.csv").is_file()]
    if not pending:
        return  # every run stored: only the tables, no cluster
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)  # first Ray here
    subprocess.run(
        [ray, "start", "--head", "--num-cpus", str(os.cpu_count()), "--dashboard-host", "127.0.0.1"],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        for seed, arm in pending:
            name = f"{arm}-s{seed}"
            shutil.rmtree(out / name, ignore_errors=True)  # the run that was interrupted: again
            arm_yaml = arm_space(out, arm, seed, trials, space)
            cmd = [sys.executable, "-m", "gpt4all_ray.tune", "--space", str(arm_yaml)]
            with (out / f"{name}.log").open("w") as log:
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


def median(values: list[float]) -> float:
    """The middle value (the upper one of an even count): the infinities of runs that never reached
    the target sort in place, where statistics.median would average them."""
    return sorted(values)[len(values) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {ARMS}; {BASELINE} is always run")
    p.add_argument("--trials", type=int, help="every arm's num_trials (default: the space's)")
    p.add_argument("--space", default="tiny_cpu", help="a space in search_spaces/ (default: the embedded default)")
    args = p.parse_args()
    from gpt4all_ray.config import load_spec
    from gpt4all_ray.divergence import DivergencePolicy

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a for a in ARMS if a in args.arms.split(",") and a != BASELINE] + [BASELINE]
    run_arms(out, arms, seeds, args.trials, args.space)

    spec = load_spec(REPO / "search_spaces" / f"{args.space}.yaml")
    workers = spec.resources.workers_per_trial
    runs = {(arm, seed): search_curve(out / f"{arm}-s{seed}", workers) for arm in arms for seed in seeds}
    for seed in seeds:  # the capped arm gets random search's compute, no more
        budget = max(p.epochs for p in runs[BASELINE, seed][0])
        if (CAPPED, seed) in runs:
            points, curves = runs[CAPPED, seed]
            runs[CAPPED, seed] = [p for p in points if p.epochs <= budget + 1e-9], curves
    finals = {key: min(p.val_loss for p in points) for key, (points, _) in runs.items()}
    target = statistics.median(finals[BASELINE, s] for s in seeds)
    policy = DivergencePolicy.for_trial(spec.fixed)
    milestones = asha_milestones(spec.tune.asha_grace_epochs, spec.tune.asha_reduction_factor, spec.max_epochs)
    rows = []
    for seed in seeds:
        base = to_target(runs[BASELINE, seed][0], target)
        curves = runs[BASELINE, seed][1]
        full, stopped, best_full, best_stopped = replay_stopper(curves, policy)
        cuts = asha_cuts(curves, milestones, spec.tune.asha_reduction_factor)
        _, asha_epochs, _, best_asha = replay_totals(curves, cuts)
        row: dict[str, Any] = {
            "seed": seed,
            "random_best": finals[BASELINE, seed],
            "random_epochs_to_target": base[0],
            "random_worker_s_to_target": base[1],
            "random_total_epochs": full,
            "replayed_stopper_epochs": stopped,
            "stopper_regret": best_stopped - best_full,
            "replayed_asha_epochs": asha_epochs,
            "asha_regret": best_asha - best_full,
        }
        for arm in arms[:-1]:
            epochs, seconds = to_target(runs[arm, seed][0], target)
            row |= {
                f"{arm}_best": finals[arm, seed],
                f"{arm}_epochs_to_target": epochs,
                f"{arm}_worker_s_to_target": seconds,
                f"{arm}_epochs_ratio": ratio(epochs, base[0]),
                f"{arm}_worker_s_ratio": ratio(seconds, base[1]),
                f"{arm}_total_epochs": max((p.epochs for p in runs[arm, seed][0]), default=0.0),
                f"{arm}_trials": len({p.trial for p in runs[arm, seed][0]}),
            }
        rows.append(row)
    total = sum(r["random_total_epochs"] for r in rows)
    summary: dict[str, Any] = {
        "target_val_loss": target,
        "milestones": milestones,
        "stopper_epochs_saved_fraction": 1 - sum(r["replayed_stopper_epochs"] for r in rows) / total,
        "max_stopper_regret": max(r["stopper_regret"] for r in rows),
        "asha_epochs_saved_fraction": 1 - sum(r["replayed_asha_epochs"] for r in rows) / total,
        "max_asha_regret": max(r["asha_regret"] for r in rows),
    }
    for arm in arms[:-1]:
        summary[f"{arm}_median_epochs_ratio"] = median([r[f"{arm}_epochs_ratio"] for r in rows])
        summary[f"{arm}_median_worker_s_ratio"] = median([r[f"{arm}_worker_s_ratio"] for r in rows])
    summary["rows"] = rows
    (out / "search_efficiency.json").write_text(json.dumps(summary, indent=2))
    print_tables(summary, arms, seeds)
    return 0


def print_tables(summary: dict[str, Any], arms: list[str], seeds: list[int]) -> None:
    rows = summary["rows"]
    print(f"target val_loss {summary['target_val_loss']:.4f} (median of random search's final bests, seeds {seeds})")
    for arm in arms[:-1]:
        print(f"\n{arm} / random")
        print("| seed | best | best random | trial-epochs to target | ratio | worker-s to target | ratio | epochs |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['seed']} | {r[f'{arm}_best']:.4f} | {r['random_best']:.4f} "
                f"| {r[f'{arm}_epochs_to_target']:.2f} / {r['random_epochs_to_target']:.2f} "
                f"| {r[f'{arm}_epochs_ratio']:.2f} "
                f"| {r[f'{arm}_worker_s_to_target']:.0f} / {r['random_worker_s_to_target']:.0f} "
                f"| {r[f'{arm}_worker_s_ratio']:.2f} "
                f"| {r[f'{arm}_total_epochs']:.1f} / {r['random_total_epochs']:.1f} |"
            )
        print(
            f"median ratio: trial-epochs {summary[f'{arm}_median_epochs_ratio']:.2f}, "
            f"worker-seconds {summary[f'{arm}_median_worker_s_ratio']:.2f}"
        )
    print("\nreplayed on random search's trials, in order:")
    print("| seed | trial-epochs | with the stopper | stopper regret | with ASHA | ASHA regret |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['random_total_epochs']:.1f} | {r['replayed_stopper_epochs']:.1f} "
            f"| {r['stopper_regret']:.4f} | {r['replayed_asha_epochs']:.1f} | {r['asha_regret']:.4f} |"
        )
    print(
        f"stopper saves {summary['stopper_epochs_saved_fraction']:.1%} (largest regret "
        f"{summary['max_stopper_regret']:.4f}); ASHA at rungs {summary['milestones']} saves "
        f"{summary['asha_epochs_saved_fraction']:.1%} (largest regret {summary['max_asha_regret']:.4f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
