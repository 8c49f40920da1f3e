"""Worker overhead: the product's trial (Ray Train + DeepSpeed worker) against a bare PyTorch loop
and against the same DeepSpeed loop without Ray, side by side in one run.

    python benchmarks/worker_overhead.py --out /tmp/bench-overhead [--repeats 2] [--epochs 2] [--zero-stage 2]
        [--arms bare,ray] [--workers 1]
    python benchmarks/worker_overhead.py --pool /tmp/bench-a /tmp/bench-b   (the tables of stored runs)

One trial of the embedded default (tiny GPT-J, 2 processes, batch 8 per process, same data order
and hyperparameters) is trained four ways, in turn, `--repeats` times:
  bare    plain PyTorch DDP (benchmarks/two_process_loops.py --loop bare)
  worker  the product's DeepSpeed worker loop without Ray (two_process_loops.py --loop worker)
  train   that loop under Ray Train alone: one TorchTrainer, no Tune (--loop train)
  ray     the product: `python -m gpt4all_ray.tune` on a one-trial space (Ray, Tune, Train)
A last bare run closes the sequence, so every other arm's run sits between two bare runs.
Figures: steady-state tokens/s (median over log windows, the first left out) and its ratio to
bare, three ways: of the arms' medians, the median of each run over the bare run before it, and
the median of each run over the mean of the bare runs before and after it (which cancels the
machine's drift over the minutes between them), with a bootstrap 90% interval of the last;
seconds from command start to the first optimizer step; the share of wall time outside optimizer
steps of the trial and of the command, and the command's seconds by phase: start (processes,
imports, and for the Ray arms Ray and Tune's trial), worker_group (the product's: Ray Train
starting its workers; the `train` arm's is in its start), setup (data, tokenizer, model,
DeepSpeed engine), train (optimizer steps), evaluate, checkpoint and report, rest (the last
checkpoint and report, logging, the command's end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The one configuration all three train: a good trial of the default search (its leaderboard's best).
POINT = {
    "learning_rate": 0.003756,
    "lr_schedule": "constant_with_warmup",
    "warmup_steps": 25,
    "weight_decay": 0.0646,
}
ARMS = ("bare", "worker", "train", "ray")


def one_trial_space(out: Path, epochs: int, zero_stage: int | None, workers: int | None = None) -> Path:
    raw = yaml.safe_load((REPO / "search_spaces" / "tiny_cpu.yaml").read_text())
    raw["name"] = "overhead"
    if zero_stage is not None:
        raw["fixed"]["zero_stage"] = zero_stage
    if workers is not None:  # the global batch stays: fewer processes accumulate more micro-batches
        raw["resources"]["workers_per_trial"] = workers
    raw["search"] = {key: {"choice": [value]} for key, value in POINT.items() | {"epochs": epochs}.items()}
    raw["tune"]["num_trials"] = 1
    path = out / "overhead_space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def loop_config(space: Path, epochs: int) -> dict[str, Any]:
    """The one trial's settings (a TrialConfig as a dict), for the loops that run without Tune."""
    from gpt4all_ray.config import load_spec

    return dataclasses.asdict(load_spec(space).trial_config(POINT | {"epochs": epochs}))


def tokens_per_s(tb_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return [e.value for e in events.Scalars("train/tokens_per_s")]


def run_ray(space: Path, out: Path) -> dict[str, Any]:
    from gpt4all_ray.evaluation import evaluations
    from gpt4all_ray.experiment.files import stored_trials

    started = time.time()
    cmd = [sys.executable, "-m", "gpt4all_ray.tune", "--space", str(space), "--results-dir", str(out)]
    subprocess.run([*cmd, "--name", "ray"], cwd=REPO, check=True, capture_output=True)
    wall = time.time() - started
    (trial,) = stored_trials(out / "ray")
    last = evaluations(trial.history)[-1]
    tb_dir = next((out / "ray" / "tensorboard").iterdir())
    return {
        "windows": tokens_per_s(tb_dir),
        "started": started,
        "trial_s": last.time_total_s,
        "command_s": wall,
        "last": last.to_metrics(),  # flat, as the bare loops' timing.json
    }


def run_loop(loop: str, cfg: dict[str, Any], out: Path, workers: int) -> dict[str, Any]:
    started = time.time()
    folder = out / loop
    cmd = [sys.executable, str(REPO / "benchmarks" / "two_process_loops.py"), "--loop", loop, "--workers", str(workers)]
    subprocess.run([*cmd, "--config", json.dumps(cfg), "--out", str(folder)], cwd=REPO, check=True)
    wall = time.time() - started
    timing = json.loads((folder / "timing.json").read_text())
    windows = timing.get("tokens_per_s_windows") or tokens_per_s(Path(timing["tb_dir"]))
    # No driver around the processes: the trial is the command.
    return {"windows": windows, "started": started, "trial_s": wall, "command_s": wall, "last": timing}


def where_the_time_goes(run: dict[str, Any]) -> dict[str, float]:
    """The command's wall seconds by phase, from rank 0's last report. Its last checkpoint and
    report are not in it (they were not over when it was sent): they are in `rest`, with the
    command's end (Tune's, Ray's shutdown) and the loop's logging."""
    from gpt4all_ray.evaluation import Evaluation
    from gpt4all_ray.experiment.compute import PHASE_GROUPS, REST, grouped_seconds, phase_seconds

    last = run["last"]
    evaluation = Evaluation.from_result(last)  # None for a bare loop's timing.json
    timed = phase_seconds(evaluation) if evaluation else None  # the product's loop: the summary's groups
    groups = grouped_seconds(timed) if timed else {"setup": last["setup_s"], "train": last["train_s"]}
    phases = {group: groups.get(group, 0.0) for group in PHASE_GROUPS}
    # Processes and imports; for the Ray arms Ray's start and Tune's trial, then Ray Train's worker
    # group (timed by the product from its TorchTrainer.fit()).
    phases = {"start": last["worker_started_at"] - run["started"] - phases["worker_group"]} | phases
    return phases | {REST: run["command_s"] - sum(phases.values())}


def summarise(run: dict[str, Any]) -> dict[str, float]:
    train_s = run["last"]["train_s"]
    return {
        "tokens_per_s": statistics.median(run["windows"][1:]),
        "to_first_step_s": run["last"]["first_step_at"] - run["started"],
        "outside_steps_of_trial": 1 - train_s / run["trial_s"],
        "outside_steps_of_command": 1 - train_s / run["command_s"],
        "command_s": run["command_s"],
    } | {f"{phase}_s": seconds for phase, seconds in where_the_time_goes(run).items()}


def ratios_to_bare(rows: list[dict[str, Any]], arm: str, around: bool = True) -> list[float]:
    """Each of the arm's runs over the bare run before it, or (around) over the mean of the bare
    runs before and after it (the one before alone where none came after)."""
    bare = {r["repeat"]: r["tokens_per_s"] for r in rows if r["arm"] == "bare"}
    neighbours = (0, 1) if around else (0,)
    return [
        r["tokens_per_s"] / statistics.mean(bare[r["repeat"] + i] for i in neighbours if r["repeat"] + i in bare)
        for r in rows
        if r["arm"] == arm
    ]


def bootstrap_median(values: list[float], resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """90% percentile interval of the median, resampling the runs."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.05 * resamples)], medians[int(0.95 * resamples) - 1]


def run_all(
    out: Path, arms: list[str], repeats: int, epochs: int, zero_stage: int | None, workers: int
) -> list[dict[str, Any]]:
    space = one_trial_space(out, epochs, zero_stage, workers)
    cfg = loop_config(space, epochs)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    order = [(repeat, arm) for repeat in range(repeats) for arm in arms] + [(repeats, "bare")]
    rows: list[dict[str, Any]] = []
    for repeat, arm in order:
        folder = out / f"{arm}-{repeat}"
        for attempt in (1, 2):
            try:
                run = run_ray(space, folder) if arm == "ray" else run_loop(arm, cfg, folder, workers)
                break
            except subprocess.CalledProcessError as failed:
                # Once in a few dozen runs a gloo rank aborts as its process exits; run it again,
                # and say so in the row.
                print(f"{arm}-{repeat} failed (exit {failed.returncode}), attempt {attempt}", flush=True)
                if attempt == 2:
                    raise
                shutil.rmtree(folder, ignore_errors=True)
        row = {"arm": arm, "repeat": repeat, "attempts": attempt} | summarise(run)
        print(json.dumps(row), flush=True)
        rows.append(row)
        # Written after every run: a benchmark stopped halfway keeps what it measured.
        (out / "overhead.json").write_text(json.dumps({"config": cfg, "rows": rows}, indent=2))
    return rows


def print_tables(runs: list[list[dict[str, Any]]]) -> None:
    """The figures over every repeat of the given runs; runs are paired within themselves."""
    rows = [r for run in runs for r in run]
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in rows)]
    bare = statistics.median(r["tokens_per_s"] for r in rows if r["arm"] == "bare")
    print(
        "\n| arm | runs | tokens/s (median) | ratio of medians | median ratio to the bare run before "
        "| median ratio to the bare runs around (90% interval) | to first step s | outside steps: trial | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        med = {k: statistics.median(r[k] for r in mine) for k in mine[0] if k not in ("arm", "repeat")}
        before = [ratio for run in runs for ratio in ratios_to_bare(run, arm, around=False)]
        bracketed = "-"  # bare over the bare runs around it says nothing
        if arm != "bare":
            around = [ratio for run in runs for ratio in ratios_to_bare(run, arm)]
            low, high = bootstrap_median(around)
            bracketed = f"{statistics.median(around):.3f} ({low:.3f}-{high:.3f})"
        print(
            f"| {arm} | {len(mine)} | {med['tokens_per_s']:.0f} | {med['tokens_per_s'] / bare:.3f} "
            f"| {statistics.median(before):.3f} | {bracketed} "
            f"| {med['to_first_step_s']:.1f} | {med['outside_steps_of_trial']:.0%} "
            f"| {med['outside_steps_of_command']:.0%} |"
        )
    phases = ("start", "worker_group", "setup", "train", "evaluate", "checkpoint_report", "rest")
    print("\nWhere the command's wall time goes, seconds (median of runs):\n")
    print("| arm | " + " | ".join(phases) + " | command |")
    print("|---|" + "---|" * (len(phases) + 1))
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm and f"{phases[0]}_s" in r]
        if mine:
            cells = [statistics.median(r[f"{key}_s"] for r in mine) for key in (*phases, "command")]
            print(f"| {arm} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), help="default: the default space's")
    p.add_argument("--workers", type=int, default=2, help="processes a trial (the default space's 2)")
    p.add_argument("--arms", default=",".join(ARMS), help="which arms, in this order each repeat; bare is always run")
    p.add_argument("--pool", type=Path, nargs="+", help="print the tables of these stored runs (--out folders)")
    args = p.parse_args()
    if args.pool:
        print_tables([json.loads((folder / "overhead.json").read_text())["rows"] for folder in args.pool])
        return 0
    if not args.out:
        p.error("--out is required (or --pool)")
    arms = [arm for arm in args.arms.split(",") if arm]
    if unknown := set(arms) - set(ARMS):
        p.error(f"--arms: unknown {sorted(unknown)}; expected some of {', '.join(ARMS)}")
    arms = ["bare"] + [arm for arm in arms if arm != "bare"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print_tables([run_all(out, arms, args.repeats, args.epochs, args.zero_stage, args.workers)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
