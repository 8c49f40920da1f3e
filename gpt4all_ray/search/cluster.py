"""Attach to a Ray cluster or start a local one, and check that a trial fits on it."""

from __future__ import annotations

import os
import re
import socket
import sys
import time

import ray

from gpt4all_ray.config import Resources, SpecError
from gpt4all_ray.ray_private import auto_address, ray_address_file
from gpt4all_ray.train.ds_ops import SHM_OP, extensions_dir, shm_op_built


def connect_ray(resources: Resources) -> None:
    """RAY_ADDRESS (as under `ray job submit`), else a running `ray start` cluster, else a local
    instance sized to this machine. RAY_ADDRESS=local always starts a local instance (Ray's meaning),
    even beside a running cluster."""
    address = os.environ.get("RAY_ADDRESS", "")
    started_here = False
    if address and address not in ("auto", "local"):
        check_reachable(address)
        try:
            ray.init()
        except ConnectionError as err:
            raise SpecError(f"RAY_ADDRESS={address}: could not attach to a Ray cluster there ({err})") from None
        where = f"attached to the Ray cluster at {address}"
    elif address != "local" and attached_to_running_cluster():
        where = "attached to the running Ray cluster"
    else:
        # Nothing preempts a local machine; the watcher only adds a core-worker error line.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # address="local" explicitly: ray.init would otherwise take RAY_ADDRESS=auto from the
        # environment and fail where no cluster runs.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1")
        where, started_here = f"started a local Ray instance with {os.cpu_count()} CPUs", True
    have = ray.cluster_resources()
    need = resources.driver_cpus + resources.workers_per_trial * resources.cpus_per_worker
    print(f"Ray: {where} ({have.get('CPU', 0):g} CPUs now; one trial needs {need:g})", flush=True)
    check_one_trial_fits(resources, have, started_here)


def check_one_trial_fits(resources: Resources, have: dict[str, float], started_here: bool) -> None:
    """Ray Train waits forever for workers it cannot place. A local instance this process started
    never grows, so a trial that does not fit is refused; a cluster it attached to may be one
    whose autoscaler adds nodes as trials ask (cluster/*.yaml start with no GPU nodes), so there
    it is a warning."""
    need = {
        "CPU": resources.driver_cpus + resources.workers_per_trial * resources.cpus_per_worker,
        "GPU": resources.workers_per_trial * resources.gpus_per_worker,
    }
    short = [k for k in need if need[k] > have.get(k, 0)]
    if not short:
        return
    needed, present = (" and ".join(f"{amounts.get(k, 0):g} {k}s" for k in short) for amounts in (need, have))
    what = f"one trial needs {needed} but this Ray cluster has {present}"
    if started_here:
        raise SpecError(
            f"{what} (driver_cpus + workers_per_trial x cpus_per_worker; workers_per_trial x gpus_per_worker); "
            "lower resources in the search space, or attach to a larger cluster with RAY_ADDRESS"
        )
    print(f"warning: {what} now; trials wait for the autoscaler to add nodes (or forever)", file=sys.stderr)


def attached_to_running_cluster() -> bool:
    """Attach to the cluster Ray's "auto" finds (a running `ray start`), when one answers there."""
    address = auto_address()
    if address is None:
        return False
    if why := unreachable(address):
        # A cluster that died without `ray stop` (killed, OOM-killed) leaves its address in this
        # file, and ray.init(address="auto") would retry it for many minutes.
        print(
            f"note: nothing answers at {address} ({why}), the Ray address in {ray_address_file()} (a cluster "
            "that died without `ray stop`); starting a local instance",
            flush=True,
        )
        return False
    try:
        ray.init(address="auto")
    except ConnectionError:
        return False
    return True


def host_and_port(address: str) -> tuple[str, int]:
    hostport = re.sub(r"^[a-z]+://", "", address).split("/")[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"RAY_ADDRESS={address}: expected host:port (or ray://host:port, auto, local)")
    return host, int(port)


def unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers a TCP connect at the address, or None when something does."""
    try:
        socket.create_connection(host_and_port(address), timeout=timeout_s).close()
    except OSError as err:
        return str(err.strerror or err)
    return None


def check_reachable(address: str) -> None:
    """Ray retries an address that nothing answers for minutes; a TCP connect says so at once."""
    if why := unreachable(address):
        host, port = host_and_port(address)
        raise SpecError(
            f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({why}); start the cluster "
            "(`ray start --head`) or unset RAY_ADDRESS to run on a local Ray"
        )


STALE_LOCK_S = 600  # the op builds in about a minute; a lock this old was left by a killed build


def warn_if_deepspeed_op_unbuilt(resources: Resources) -> None:
    if resources.gpus_per_worker:
        return  # only CPU workers load DeepSpeed's shared-memory op
    folder = extensions_dir() / SHM_OP  # the workers run this Python environment too
    # Otherwise the first trial is a minute of silence on a new machine.
    if not shm_op_built():
        print(
            "note: DeepSpeed compiles its CPU shared-memory op on its first start in this Python "
            f"environment (about a minute; cached in {folder.parent})",
            flush=True,
        )
    # torch's build lock outlives a build that was killed, and every later worker waits on it
    # forever, silently.
    lock = folder / "lock"
    if lock.is_file() and (age := time.time() - lock.stat().st_mtime) > STALE_LOCK_S:
        print(
            f"note: {lock} is a DeepSpeed build lock {age / 60:.0f} min old, left by a build that was "
            f"killed; workers will wait on it forever. If no build is running, remove it: rm {lock}",
            flush=True,
        )
