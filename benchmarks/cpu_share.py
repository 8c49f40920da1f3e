"""Where the CPU goes while a trial trains: the product's trial (Ray, Tune, Ray Train) against the
same DeepSpeed worker loop without Ray, side by side in one run.

    python benchmarks/cpu_share.py --out /tmp/bench-cpu [--window 15] [--repeats 2]

Each arm trains the embedded default's trial (benchmarks/worker_overhead.py's configuration, 10
epochs, divergence stop off so it runs on); once it is in steady state (`--settle` seconds into the
loop arm's first log, after the second epoch's line for the product), every process's CPU seconds are read
twice, `--window` seconds apart. Figures: cores used by the two training ranks, by everything
else, and the largest other processes. On a 2-core machine every other process's CPU is taken from
the ranks, which also wait on each other at every all-reduce.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from worker_overhead import loop_config, one_trial_space  # noqa: E402

RANKS = ("ray::RayTrainWorker", "multiprocessing.spawn")  # a rank's command line, with and without Ray
EPOCHS = 10


def cpu_seconds() -> dict[int, tuple[float, str]]:
    seen = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        times = p.info["cpu_times"]
        if times is None:  # gone, or not ours to read
            continue
        command = " ".join(p.info["cmdline"] or [p.info["name"] or "?"]).strip()
        seen[p.info["pid"]] = (times.user + times.system, command)
    return seen


def sample(window: float) -> dict[str, object]:
    before, started = cpu_seconds(), time.time()
    time.sleep(window)
    after, seconds = cpu_seconds(), time.time() - started
    used = [(cpu - before.get(pid, (0.0, ""))[0], command) for pid, (cpu, command) in after.items()]
    ranks = sum(cpu for cpu, command in used if any(r in command for r in RANKS))
    others = sorted(((cpu, command) for cpu, command in used if not any(r in command for r in RANKS)), reverse=True)
    return {
        "window_s": seconds,
        "rank_cores": ranks / seconds,
        "other_cores": sum(cpu for cpu, _ in others) / seconds,
        "top_others": [(round(cpu / seconds, 4), command.split(" (")[0][:90]) for cpu, command in others[:8]],
    }


def event_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.glob("tb/**/events*") if f.is_file())


def wait_for(proc: subprocess.Popen, ready: Callable[[], int]) -> int:
    """Poll until ready() is truthy (and return it), failing if the process ends first."""
    while not (value := ready()):
        assert proc.poll() is None, "the loop ended before it logged"
        time.sleep(0.5)
    return value


def run_loop(out: Path, space: Path, settle: float, window: float) -> dict[str, object]:
    cfg = loop_config(space, EPOCHS)
    cmd = [sys.executable, str(REPO / "benchmarks" / "two_process_loops.py"), "--loop", "worker"]
    # Its own session, so that the window's end kills the ranks with it, before their exit handlers
    # (killed one by one they printed KeyboardInterrupt tracebacks into this benchmark's output).
    proc = subprocess.Popen(
        [*cmd, "--config", json.dumps(cfg), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Training has begun once rank 0's event file grows past its header with a first log window
        # (before that, a first DeepSpeed start on a machine may compile its op).
        header = wait_for(proc, lambda: event_bytes(out))
        wait_for(proc, lambda: event_bytes(out) > header)
        time.sleep(settle)
        result = sample(window)
        assert proc.poll() is None, "the loop ended before the window: raise EPOCHS"
        return result
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_product(out: Path, space: Path, window: float) -> dict[str, object]:
    cmd = [sys.executable, "-m", "gpt4all_ray.tune", "--space", str(space), "--results-dir", str(out), "--name", "p"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout
        for line in proc.stdout:
            if f"epoch 2/{EPOCHS}" in line:
                break
        result = sample(window)
        assert proc.poll() is None, "the trial ended before the window: raise EPOCHS"
        for _ in proc.stdout:  # let it finish: the next arm needs the cores
            pass
        return result
    finally:
        proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--settle", type=float, default=4.0, help="seconds after the loop arm's first log before its window")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    space = one_trial_space(out, EPOCHS, None)
    raw = yaml.safe_load(space.read_text())
    raw["fixed"]["stop_on_divergence"] = False  # one long steady trial
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    rows = []
    for repeat in range(args.repeats):
        for arm in ("worker", "ray"):
            folder = out / f"{arm}-{repeat}"
            run = (
                run_loop(folder, space, args.settle, args.window)
                if arm == "worker"
                else run_product(folder, space, args.window)
            )
            row = {"arm": arm, "repeat": repeat} | run
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / "cpu_share.json").write_text(json.dumps(rows, indent=2))
    print("\n| arm | repeat | cores used by the 2 ranks | by all other processes | largest others (cores) |")
    print("|---|---|---|---|---|")
    for r in rows:
        top = "; ".join(f"{name} {cores:.3f}" for cores, name in r["top_others"][:4])
        print(f"| {r['arm']} | {r['repeat']} | {r['rank_cores']:.2f} | {r['other_cores']:.2f} | {top} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
