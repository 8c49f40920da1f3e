"""Search efficiency on a surrogate: would another sampler or a larger budget bring the product's
search to half of random search's compute (issue 7's goal 3) on the embedded default's space?

    python benchmarks/search_surrogate.py [--trials 6,12,20] [--seeds 50] [--from-runs /tmp/bench-search]

Not a measurement of the product: each search here asks Optuna's samplers for points of
search_spaces/tiny_cpu.yaml and answers with a surrogate of the validation loss, the final loss of
the three nearest trials really run by `benchmarks/search_efficiency.py` (results/benchmarks/
search_surrogate/2026-12-01-trials.csv, one row per distinct configuration, written from that benchmark's output
folder with --from-runs; inverse-distance weighted over log learning rate, schedule, epochs, warmup and
weight decay). A surrogate search takes seconds where a real one takes minutes, so many seeds and
budgets fit in one run; it says which settings are worth a real run, and how often a 5-seed median
(what the real benchmark reports) lands at or under 0.5 by chance.

Compute to target is counted as in search_efficiency.py: trial-epochs in start order up to the
first trial at or under the target (the median of random search's best over the seeds), with
trials that never reach it at infinite compute.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from optuna.distributions import BaseDistribution  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from search_efficiency import ratio  # noqa: E402

from gpt4all_ray.config import TuneSettings, load_spec  # noqa: E402
from gpt4all_ray.search.searcher import make_sampler  # noqa: E402
from gpt4all_ray.search.spaces import param_space  # noqa: E402

TRIALS_CSV = REPO / "results" / "benchmarks" / "search_surrogate" / "2026-12-01-trials.csv"
# Distance scales: about the spread over which the loss changes (a quarter of a decade of learning rate).
SCALES = {"learning_rate": 0.15, "epochs": 0.7, "warmup_steps": 130.0, "weight_decay": 0.22}
NEIGHBOURS = 3

Point = dict[str, object]
Observed = list[tuple[Point, float]]

STARTUP = 3  # the embedded default's tune.startup_trials


def product_sampler(searcher: str) -> Callable[[int], optuna.samplers.BaseSampler]:
    """The sampler `tune.searcher: <searcher>` makes in the product."""
    return lambda seed: make_sampler(TuneSettings(searcher=searcher, seed=seed, startup_trials=STARTUP))


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "random": product_sampler("random"),
    "tpe": product_sampler("tpe"),
    "gp": product_sampler("gp"),
    # Not in the product: what other settings of the two models would do.
    "tpe_multivariate": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP, multivariate=True),
    "gp_deterministic": lambda seed: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=STARTUP, deterministic_objective=True
    ),
    # More start points, or evenly spread ones, for the GP to fit before it models the loss.
    "gp_startup5": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
    "gp_sobol4": lambda seed: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=4, independent_sampler=optuna.samplers.QMCSampler(scramble=True, seed=seed)
    ),
}


COLUMNS = ("learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "epochs", "val_losses", "runs")


def write_trials(runs_dirs: list[Path]) -> int:
    """One row per distinct configuration of the runs' leaderboards (the arms of a seed share their
    first trials), its longest loss curve kept, and the runs it appeared in."""
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    for board in sorted(board for runs_dir in runs_dirs for board in runs_dir.glob("*/leaderboard.csv")):
        for row in csv.DictReader(board.open()):
            key = tuple(row[c] for c in COLUMNS[:5])
            kept = rows.setdefault(key, {c: row[c] for c in COLUMNS[:6]} | {"runs": ""})
            if len(row["val_losses"].split()) > len(kept["val_losses"].split()):
                kept["val_losses"] = row["val_losses"]
            kept["runs"] = " ".join([*kept["runs"].split(), f"{board.parent.parent.name}/{board.parent.name}"])
    with TRIALS_CSV.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows.values(), key=lambda r: float(r["learning_rate"])))
    return len(rows)


def observed() -> Observed:
    """Trials that ran all their epochs, with their final validation loss."""
    rows = []
    for row in csv.DictReader(TRIALS_CSV.open()):
        losses = [float(v) for v in row["val_losses"].split()]
        if len(losses) == int(row["epochs"]):
            point = {
                "learning_rate": float(row["learning_rate"]),
                "lr_schedule": row["lr_schedule"],
                "warmup_steps": int(row["warmup_steps"]),
                "weight_decay": float(row["weight_decay"]),
                "epochs": int(row["epochs"]),
            }
            rows.append((point, losses[-1]))
    return rows


def distance(a: Point, b: Point) -> float:
    d = (math.log10(float(a["learning_rate"])) - math.log10(float(b["learning_rate"]))) / SCALES["learning_rate"]
    total = d * d + (a["lr_schedule"] != b["lr_schedule"])
    for key in ("epochs", "warmup_steps", "weight_decay"):
        total += ((float(a[key]) - float(b[key])) / SCALES[key]) ** 2
    return total


def surrogate_loss(point: Point, data: Observed) -> float:
    nearest = sorted((distance(point, seen), loss) for seen, loss in data)[:NEIGHBOURS]
    weights = [1 / (d + 1e-3) for d, _ in nearest]
    return sum(w * loss for w, (_, loss) in zip(weights, nearest, strict=True)) / sum(weights)


def search(
    sampler: optuna.samplers.BaseSampler, space: dict[str, BaseDistribution], trials: int, data
) -> list[tuple[int, float]]:
    """(epochs, loss) of each trial, in start order."""
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(trials):
        trial = study.ask(space)
        point = trial.params
        loss = surrogate_loss(point, data)
        study.tell(trial, loss)
        out.append((int(point["epochs"]), loss))
    return out


def epochs_to_target(run: list[tuple[int, float]], target: float) -> float:
    spent = 0
    for epochs, loss in run:
        spent += epochs
        if loss <= target:
            return spent
    return math.inf


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", default="6,12,20", help="search budgets, in trials")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument(
        "--from-runs", type=Path, nargs="+", help="write the trials CSV from search_efficiency.py's --out folders first"
    )
    args = p.parse_args()
    if args.from_runs:
        print(f"{write_trials(args.from_runs)} distinct trials written to {TRIALS_CSV.relative_to(REPO)}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # The space as the product hands it to Optuna: its Tune domains, converted by Ray's OptunaSearch.
    space = OptunaSearch.convert_search_space(param_space(load_spec(REPO / "search_spaces" / "tiny_cpu.yaml")))
    data = observed()
    seeds = range(args.seeds)
    print(f"surrogate: {len(data)} completed trials from {TRIALS_CSV.relative_to(REPO)}; {args.seeds} seeds")
    print("| trials | sampler | target | median ratio to random (trial-epochs) | 5-seed medians at or under 0.5 |")
    print("|---|---|---|---|---|")
    for trials in (int(n) for n in args.trials.split(",")):
        baseline = [search(SAMPLERS["random"](s), space, trials, data) for s in seeds]
        target = statistics.median(min(loss for _, loss in run) for run in baseline)
        for name in args.samplers.split(","):
            if name == "random":
                continue
            ratios = [
                ratio(
                    epochs_to_target(search(SAMPLERS[name](s), space, trials, data), target),
                    epochs_to_target(baseline[s], target),
                )
                for s in seeds
            ]
            groups = [statistics.median(ratios[i : i + 5]) for i in range(0, len(ratios) - 4, 5)]
            under = sum(g <= 0.5 for g in groups)
            print(
                f"| {trials} | {name} | {target:.4f} | {statistics.median(ratios):.2f} | {under} of {len(groups)} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
