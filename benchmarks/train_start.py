"""What Ray Train costs a trial before and after its loop: a TorchTrainer with the product's worker
count and resources runs a loop that does nothing, `--repeats` times in one local Ray instance.

    python benchmarks/train_start.py [--repeats 4] [--workers 2]

Prints, per fit(): seconds from fit() to rank 0 entering the loop (Ray Train's controller, worker
actors, process group), from the loop's end to fit() returning, and fit() in all. The product's
trials report the first as `worker_group_s` (with the import of the real loop's module on top).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def empty_loop(config: dict[str, Any]) -> None:
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        Path(config["entered_file"]).write_text(str(time.time()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory(prefix="train_start_") as tmp:
        entered_file = Path(tmp) / "entered"
        for repeat in range(args.repeats):
            started = time.time()
            TorchTrainer(
                empty_loop,
                train_loop_config={"entered_file": str(entered_file)},
                scaling_config=ray.train.ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 0.5}),
                run_config=ray.train.RunConfig(storage_path=tmp, name=f"run{repeat}"),  # type: ignore[call-arg]
            ).fit()
            ended = time.time()
            entered = float(entered_file.read_text())
            row = {"to_loop_s": entered - started, "after_loop_s": ended - entered, "fit_s": ended - started}
            print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
            rows.append(row)
    medians = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
    print(f"median of {len(rows)}: {json.dumps(medians)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
