"""Every use of Ray's private API, in one place. Ray 2.60 (the pin in pyproject.toml) has no
public way to do these things; tests/unit/test_ray_private.py fails, naming the missing
name, when a Ray upgrade moves one. Ray's private *attributes* read elsewhere are checked there
too (ASHA's `_brackets` in search/stopping.py, OptunaSearch's `_ot_trials` in search/searcher.py,
MLflowLoggerCallback's `_trial_runs` and `mlflow_util.setup_mlflow` in search/tracking_mlflow.py,
the W&B callback's `_logger_actor_cls`, `_trial_queues` and `_WandbLoggingActor` in
search/tracking_wandb.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any


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


def failure_decisions(record: Callable[[Exception, bool, bool], None]) -> Any:
    """A Ray Train callback that calls record(error, preempted, retried) once for each failure the
    trial's controller decides on: retried (its workers restart from the last checkpoint) or not
    (the budget is spent). `preempted` is Ray's own rule for charging it to
    FailureConfig.max_preemption_failures rather than max_failures, so what the trial reports is
    what Ray Train spent. Ray 2.60's public UserCallback.after_exception is called at every poll
    that sees errors (so more than once a failure), and not at all for a preemption Ray Train
    waits out (PreemptionError once the drain deadline passes, the workers maybe still alive)."""
    from ray.train.v2._internal.execution.callback import ControllerCallback
    from ray.train.v2._internal.execution.controller.state import ErroredState, ReschedulingState, RestartingState
    from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure

    class FailureDecisions(ControllerCallback):  # type: ignore[misc]
        def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
            if isinstance(current_state, RestartingState | ReschedulingState | ErroredState):
                error = current_state.training_failed_error
                record(error, _is_preemption_failure(error), not isinstance(current_state, ErroredState))

    return FailureDecisions()


def first_worker_error(error: Exception) -> tuple[list[int], str]:
    """(the ranks that failed, the first one's error) of a Ray Train failure: a WorkerGroupError's
    per-rank errors, unwrapping Ray's health-check wrapper to the death it reports."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        info = getattr(error, "preemption_info", None)
        ranks = sorted({r for rs in (info.preempted_node_to_ranks.values() if info else ()) for r in rs})
        return ranks, str(error)
    first = failures[min(failures)]
    first = getattr(first, "health_check_failure", None) or first  # WorkerHealthCheckFailedError's cause
    return sorted(failures), str(first)


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
