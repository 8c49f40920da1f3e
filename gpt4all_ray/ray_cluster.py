"""Attach to a Ray cluster or start a local one, and check that a trial fits on it."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from gpt4all_ray.config import Resources, SpecError


def connect_ray(resources: Resources) -> None:
    """RAY_ADDRESS (as under `ray job submit`), else a running `ray start` cluster, else a local
    instance sized to this machine."""
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        where = f"attached to the Ray cluster at {os.environ['RAY_ADDRESS']}"
    else:
        try:
            ray.init(address="auto")
            where = "attached to the running Ray cluster"
        except ConnectionError:
            # Nothing preempts a local machine; the watcher only adds a core-worker error line.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1")
            where = f"started a local Ray instance with {os.cpu_count()} CPUs"
    cpus = ray.cluster_resources().get("CPU", 0)
    need = resources.driver_cpus + resources.workers_per_trial * resources.cpus_per_worker
    print(f"Ray: {where} ({cpus:g} CPUs now; one trial needs {need:g})", flush=True)
    if need > cpus and not os.environ.get("RAY_ADDRESS"):
        # Ray Train would wait forever for workers it cannot place.
        raise SpecError(
            f"one trial needs {need:g} CPUs (driver_cpus + workers_per_trial x cpus_per_worker) "
            f"but this Ray cluster has {cpus:g}; lower resources in the search space"
        )


def warn_if_deepspeed_op_unbuilt(resources: Resources) -> None:
    # Otherwise the first trial is a minute of silence on a new machine.
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    if resources.gpus_per_worker == 0 and not any(root.glob("*/deepspeed_shm_comm")):
        print(
            "note: DeepSpeed compiles its CPU shared-memory op on its first start on this machine "
            "(about a minute; cached afterwards)",
            flush=True,
        )
