"""Every use of Ray's private API, in one place. Ray 2.60 (the pin in pyproject.toml) has no
public way to do these six things; tests/unit/test_ray_private.py fails, naming the missing
name, when a Ray upgrade moves one. Ray's private *attributes* read elsewhere are checked there
too (ASHA's `_brackets` in search/stopping.py, OptunaSearch's `_ot_trials` in search/searcher.py).
"""

from __future__ import annotations

import json
import logging


def ray_address_file() -> str:
    """The file `ray start` writes the head's address to (what "auto" reads when no GCS runs)."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def auto_address() -> str | None:
    """The address ray.init(address="auto") would attach to: a running GCS process's, else the
    one in Ray's address file (Ray's own lookup); None when there is neither. Public ray.init
    would retry an unreachable address for minutes instead of saying so."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None


def quiet_train_report_logger() -> None:
    """Ray Train 2.60 logs every report at INFO under a logger named by its file path, which
    Train's LoggingConfig(log_level=...) does not reach; our progress lines already say the same."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def charged_as_preemption(worker_errors: dict[int, Exception]) -> bool:
    """Whether Ray Train 2.60 charges these worker errors to FailureConfig.max_preemption_failures
    (a worker on a node drained for preemption died) rather than to max_failures: Ray's own rule,
    so the count the trial reports is the one Ray Train spent."""
    from ray.train.v2._internal.execution.worker_group.poll import _is_preempted_actor

    return any(_is_preempted_actor(error) for error in worker_errors.values())


def failed_workers(worker_errors: dict[int, Exception]) -> frozenset[tuple[int, str]]:
    """Which worker actors these errors are of (rank, actor id): Ray Train 2.60 hands the same
    failure to UserCallback.after_exception at each poll until it acts on it, and a restarted
    group's workers are new actors."""
    identities = set()
    for rank, error in worker_errors.items():
        inner = getattr(error, "health_check_failure", None) or error  # WorkerHealthCheckFailedError's cause
        identities.add((rank, str(getattr(inner, "actor_id", None) or inner)))
    return frozenset(identities)


def saved_as_ended(tune_root: str) -> set[str]:
    """The trials Tune's newest saved experiment state marks TERMINATED (completed, or stopped by
    a stopper or scheduler): a restored Tuner does not run them again. A trial can end before
    that state is saved; a driver killed in between leaves it RUNNING there, and --resume restarts
    it from its checkpoint."""
    return {trial for trial, status in saved_statuses(tune_root).items() if status == "TERMINATED"}


def saved_statuses(tune_root: str) -> dict[str, str]:
    """Each trial's status (PENDING, RUNNING, TERMINATED, ERROR) in Tune's newest saved experiment
    state; empty where none is saved. The file (`experiment_state-<time>.json`, `trial_data`:
    [trial JSON, runtime JSON] pairs) is Tune's private format; `tune_root` is a path or a URI."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(tune_root)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    states = sorted(i.path for i in listing if i.base_name.startswith("experiment_state-") and i.path.endswith(".json"))
    if not states:
        return {}
    with fs.open_input_stream(states[-1]) as f:
        saved = json.loads(f.read())
    trials = (json.loads(trial) for trial, _ in saved["trial_data"])
    return {t["trial_id"]: str(t.get("status", "")) for t in trials}
