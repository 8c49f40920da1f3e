"""Search efficiency: the product's search against random search with no early stopping, on the
embedded default, several seeds, side by side in one run.

    python benchmarks/search_efficiency.py --out /tmp/bench-search [--seeds 10,...,19] [--arms ours,asha]
        [--trials 20] [--target 3.1401]

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
- expected running time to a target validation loss (ERT, as in COCO/BBOB), in trial-epochs and in
  worker-seconds. The target is fixed before the runs (--target; default 3.1401, the median of random
  search's final bests over seeds 0-4 at 6 trials, results/benchmarks/search_efficiency/2026-11-30.json).
  A run's compute to target counts its trials in start order (they run one at a time) up to the first
  evaluation at or under the target; a run that never reaches it counts its whole budget.
  ERT(arm) = compute of all its runs / runs that reached the target. The figure is ERT(arm) /
  ERT(random), with a bootstrap 90% interval over seeds (resampled in pairs: an arm and random search
  on the same seeds), and every seed's compute to target listed;
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
DEFAULT_TARGET = 3.1401
"""Fixed before the ERT runs of 2026-12-06: the median of random search's final bests, seeds 0-4 at
6 trials (results/benchmarks/search_efficiency/2026-11-30.json); those runs' seeds are not reused (default --seeds)."""


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
    from gpt4all_ray.evaluation import evaluations
    from gpt4all_ray.experiment.files import stored_trials

    spent_epochs = spent_s = 0.0
    points, curves = [], []
    for trial in stored_trials(exp_dir):  # Tune's start order
        reported = evaluations(trial.history)
        for h in reported:
            seconds = h.time_total_s * workers
            points.append(Evaluation(trial.trial_id, spent_epochs + h.epoch_progress, spent_s + seconds, h.val_loss))
        curves.append([(h.epoch_progress, h.val_loss) for h in reported])
        if reported:
            spent_epochs += reported[-1].epoch_progress
            spent_s += reported[-1].time_total_s * workers
    return points, curves


@dataclass(frozen=True)
class RunToTarget:
    """One search's compute to the target: up to its first evaluation at or under it, or, when
    it never got there, its whole budget."""

    reached: bool
    epochs: float
    worker_s: float


def to_target(points: list[Evaluation], target: float) -> RunToTarget:
    for p in points:
        if p.val_loss <= target:
            return RunToTarget(True, p.epochs, p.worker_s)
    last = points[-1] if points else Evaluation("", 0.0, 0.0, math.inf)  # compute only grows
    return RunToTarget(False, last.epochs, last.worker_s)


def expected_running_time(runs: list[RunToTarget], unit: str) -> float:
    """ERT: the compute of all runs (whole budgets for those that missed) per run that reached the
    target; inf when none did. unit: "epochs" or "worker_s"."""
    reached = sum(r.reached for r in runs)
    spent = sum(getattr(r, unit) for r in runs)
    return spent / reached if reached else math.inf


def ert_ratio(arm: list[RunToTarget], baseline: list[RunToTarget], unit: str) -> float:
    """ERT(arm) / ERT(baseline); nan when neither reached the target (no information)."""
    ours, base = expected_running_time(arm, unit), expected_running_time(baseline, unit)
    if math.isinf(ours) and math.isinf(base):
        return math.nan
    return ours / base


def bootstrap_interval(
    arm: list[RunToTarget], baseline: list[RunToTarget], unit: str, resamples: int = 10_000, level: float = 0.9
) -> tuple[float, float]:
    """The ERT ratio's bootstrap interval over seeds, resampled in pairs (arm and baseline on the
    same seeds). Resamples where neither arm reached the target carry no ratio and are left out;
    inf (only the baseline reached it) sorts in place."""
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(resamples):
        picks = rng.integers(0, len(arm), len(arm))
        r = ert_ratio([arm[i] for i in picks], [baseline[i] for i in picks], unit)
        if not math.isnan(r):
            ratios.append(r)
    tail = (1 - level) / 2
    return (
        float(np.quantile(ratios, tail, method="inverted_cdf")),
        float(np.quantile(ratios, 1 - tail, method="inverted_cdf")),
    )


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="10,11,12,13,14,15,16,17,18,19")
    p.add_argument("--arms", default="ours", help=f"a subset of {ARMS}; {BASELINE} is always run")
    p.add_argument("--trials", type=int, help="every arm's num_trials (default: the space's)")
    p.add_argument("--space", default="tiny_cpu", help="a space in search_spaces/ (default: the embedded default)")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET, help="target val loss, fixed before the runs")
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
    target = args.target
    reach = {key: to_target(points, target) for key, (points, _) in runs.items()}
    policy = DivergencePolicy.for_trial(spec.fixed)
    milestones = asha_milestones(spec.tune.asha_grace_epochs, spec.tune.asha_reduction_factor, spec.max_epochs)
    rows = []
    for seed in seeds:
        curves = runs[BASELINE, seed][1]
        full, stopped, best_full, best_stopped = replay_stopper(curves, policy)
        cuts = asha_cuts(curves, milestones, spec.tune.asha_reduction_factor)
        _, asha_epochs, _, best_asha = replay_totals(curves, cuts)
        row: dict[str, Any] = {
            "seed": seed,
            "random_total_epochs": full,
            "replayed_stopper_epochs": stopped,
            "stopper_regret": best_stopped - best_full,
            "replayed_asha_epochs": asha_epochs,
            "asha_regret": best_asha - best_full,
        }
        for arm in arms:
            points = runs[arm, seed][0]
            row |= {
                f"{arm}_best": min(p.val_loss for p in points),
                f"{arm}_reached": reach[arm, seed].reached,
                f"{arm}_epochs_to_target": reach[arm, seed].epochs,
                f"{arm}_worker_s_to_target": reach[arm, seed].worker_s,
                f"{arm}_total_epochs": max((p.epochs for p in points), default=0.0),
                f"{arm}_trials": len({p.trial for p in points}),
            }
        rows.append(row)
    total = sum(r["random_total_epochs"] for r in rows)
    summary: dict[str, Any] = {
        "target_val_loss": target,
        "seeds": seeds,
        "milestones": milestones,
        "stopper_epochs_saved_fraction": 1 - sum(r["replayed_stopper_epochs"] for r in rows) / total,
        "max_stopper_regret": max(r["stopper_regret"] for r in rows),
        "asha_epochs_saved_fraction": 1 - sum(r["replayed_asha_epochs"] for r in rows) / total,
        "max_asha_regret": max(r["asha_regret"] for r in rows),
    }
    baseline = [reach[BASELINE, s] for s in seeds]
    for arm in arms:
        summary[f"{arm}_reached"] = sum(reach[arm, s].reached for s in seeds)
        for unit in ("epochs", "worker_s"):
            summary[f"{arm}_ert_{unit}"] = expected_running_time([reach[arm, s] for s in seeds], unit)
    for arm in arms[:-1]:
        for unit in ("epochs", "worker_s"):
            mine = [reach[arm, s] for s in seeds]
            summary[f"{arm}_ert_ratio_{unit}"] = ert_ratio(mine, baseline, unit)
            summary[f"{arm}_ert_ratio_{unit}_interval90"] = bootstrap_interval(mine, baseline, unit)
    summary["rows"] = rows
    (out / "search_efficiency.json").write_text(json.dumps(summary, indent=2))
    print_tables(summary, arms)
    return 0


def print_tables(summary: dict[str, Any], arms: list[str]) -> None:
    rows = summary["rows"]
    print(f"target val_loss {summary['target_val_loss']:.4f} (fixed before the runs), seeds {summary['seeds']}")

    def spent(r: dict[str, Any], arm: str, unit: str, fmt: str) -> str:
        value = format(r[f"{arm}_{unit}_to_target"], fmt)
        return value if r[f"{arm}_reached"] else f"never ({value})"

    for arm in arms[:-1]:
        print(f"\n{arm} / random; compute to target, or (the whole run) where it never got there")
        print("| seed | best | best random | trial-epochs | random | worker-s | random |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['seed']} | {r[f'{arm}_best']:.4f} | {r['random_best']:.4f} "
                f"| {spent(r, arm, 'epochs', '.0f')} | {spent(r, 'random', 'epochs', '.0f')} "
                f"| {spent(r, arm, 'worker_s', '.0f')} | {spent(r, 'random', 'worker_s', '.0f')} |"
            )
        for unit, label in (("epochs", "trial-epochs"), ("worker_s", "worker-seconds")):
            low, high = summary[f"{arm}_ert_ratio_{unit}_interval90"]
            print(
                f"ERT in {label}: {arm} {summary[f'{arm}_ert_{unit}']:.1f} "
                f"({summary[f'{arm}_reached']}/{len(rows)} reached), random {summary[f'random_ert_{unit}']:.1f} "
                f"({summary['random_reached']}/{len(rows)}); ratio {summary[f'{arm}_ert_ratio_{unit}']:.2f} "
                f"(90% interval {low:.2f}-{high:.2f})"
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
