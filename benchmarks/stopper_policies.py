"""Which divergence-stopper policy saves compute without losing the best trial? Replays a grid of
policies (patience, min_delta, smoothing) on the full curves of random search without stopping,
stored by benchmarks/search_efficiency.py, the same trials in the same order.

    python benchmarks/stopper_policies.py --runs /tmp/bench-overfit:tiny_cpu_overfit \
        --runs /tmp/bench-search30:tiny_cpu

Each --runs is FOLDER:SPACE (the folder search_efficiency.py --out wrote; the space it ran).
For each folder and policy: the fraction of trial-epochs the policy saves, the largest regret
over seeds (best loss with the policy minus best loss without; the issue asks for 0), how many
seeds had any, and how many trials it stopped. Seconds only; nothing is trained.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

from search_efficiency import REPO, Curve, judge, replay_stopper, search_curve  # this folder is on sys.path

sys.path.insert(0, str(REPO))
from gpt4all_ray.divergence import DivergencePolicy  # noqa: E402  (the repository root, just added)

PATIENCE = (1, 2, 3)
MIN_DELTA = (0.0, 0.005, 0.01, 0.02)
SMOOTHING = (0.0, 0.5)


def stopped_trials(curves: list[Curve], policy: DivergencePolicy) -> int:
    return sum(1 for curve in curves if curve and judge(curve, policy).stop)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", action="append", required=True, help="FOLDER:SPACE, repeatable")
    args = p.parse_args()
    from gpt4all_ray.config import load_spec

    for item in args.runs:
        folder, _, space = item.rpartition(":")
        if not folder:
            raise SystemExit(f"--runs {item!r}: expected FOLDER:SPACE, e.g. /tmp/bench-overfit:tiny_cpu_overfit")
        spec = load_spec(REPO / "search_spaces" / f"{space}.yaml")
        product = DivergencePolicy.for_trial(spec.fixed)
        runs = sorted(Path(folder).glob("random-s*/"))
        if not runs:
            raise SystemExit(f"{folder}: no random-s* experiment (run benchmarks/search_efficiency.py first)")
        seeds = {run.name: search_curve(run, spec.resources.workers_per_trial)[1] for run in runs}
        curves = [curve for c in seeds.values() for curve in c if curve]
        worse = sum(1 for curve in curves if curve[-1][1] > min(loss for _, loss in curve))
        print(f"\n{folder} ({space}): {len(seeds)} seeds, {len(curves)} trials, {worse} end above their best")
        described = f"patience {product.patience}, min_delta {product.min_delta}, smoothing {product.smoothing}"
        print(f"the space's policy: {described}")
        print("| patience | min_delta | smoothing | trial-epochs saved | largest regret | seeds with regret | stops |")
        print("|---|---|---|---|---|---|---|")
        for patience, min_delta, smoothing in itertools.product(PATIENCE, MIN_DELTA, SMOOTHING):
            policy = replace(product, patience=patience, min_delta=min_delta, smoothing=smoothing)
            full = stopped = 0.0
            regrets, count = [], 0
            for seed_curves in seeds.values():
                whole, cut, best_whole, best_cut = replay_stopper(seed_curves, policy)
                full, stopped = full + whole, stopped + cut
                regrets.append(best_cut - best_whole)
                count += stopped_trials(seed_curves, policy)
            mark = " (the space's)" if policy == product else ""
            print(
                f"| {patience} | {min_delta} | {smoothing}{mark} | {1 - stopped / full:.1%} | {max(regrets):.4f} "
                f"| {sum(r > 0 for r in regrets)} of {len(regrets)} | {count} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
