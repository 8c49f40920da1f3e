"""A stored experiment, read back from its folder alone: each Tune trial's parameters, reported
results, configs and error state (Ray Tune's trial folders under ray/tune/), and what the Optuna
study holds for it. The report is built from this, so it can be rebuilt after the driver is gone."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpt4all_ray.experiment.durable_reports import Restart

SPACE_COPY = "space.yaml"  # the search space as the experiment ran it, for --resume and the record
SETTINGS = "experiment.json"  # what the command line set: trials requested, --storage; the data read
PROMPT_PLACEHOLDER = "{prompt}"  # where the prompt goes in experiment.json's data.gpt4all_template
FORMAT = 2
"""experiment.json's "format": 2 since the package was laid out by process (2026-12-06). Tune's
saved state names our classes by module path, and an earlier experiment's paths no longer exist."""
DATA_CACHE = "data_cache"  # the tokenized data, built once (data/cache.py); every trial maps it
STARTS = "starts.json"  # the configurations tried before sampling, with where each comes from
ASHA_RUNGS = "asha_rungs.json"  # ASHA's recorded values per rung, kept across --resume (stopping.py)
TRIAL_DIR = re.compile(r"^trial_driver_(?P<id>[0-9a-f]+)_(?P<index>\d+)_")


@dataclass
class StoredTrial:
    trial_id: str
    index: int
    """Tune's 1-based creation order."""
    params: dict[str, Any]
    history: list[dict[str, Any]]
    error: bool
    config: dict[str, Any] | None
    resources: dict[str, Any] | None
    restarts: list[Restart] = field(default_factory=list)
    """Each failure of its workers that Ray Train saw, with the budget it was charged to."""
    ds_config: dict[str, Any] | None = None
    """The DeepSpeed config its driver wrote beside its results (search/trial.py)."""


def tune_dir(exp_dir: Path) -> Path:
    return exp_dir / "ray" / "tune"


def read_settings(exp_dir: Path) -> dict[str, Any]:
    """experiment.json: what the command line set, and the data the search read (cli/tune.py);
    empty where the folder has none."""
    return _json(exp_dir / SETTINGS) or {}


def storage_root(exp_dir: Path) -> str:
    """Where Ray keeps this experiment's tune/ and train/ (gpt4all_ray.experiment.storage)."""
    from gpt4all_ray.experiment.storage import ray_root

    return ray_root(read_settings(exp_dir).get("storage"), exp_dir)


def default_storage_url(exp_dir: Path) -> str:
    """The Optuna study's home when tune.optuna_storage names none: SQLite in the experiment."""
    return f"sqlite:///{exp_dir.resolve() / 'optuna.db'}"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def stored_trials(exp_dir: Path) -> list[StoredTrial]:
    """Each trial's history is its durable reports (durable_reports.py) followed by Tune's
    result.json: where both hold a step, Tune's (with its timings) comes last and wins."""
    from gpt4all_ray.experiment.durable_reports import saved_reports, saved_restarts
    from gpt4all_ray.ray_private import saved_statuses

    trials, train_root = [], f"{storage_root(exp_dir)}/train"
    # Tune writes error.txt at every failure, also one it retried (a driver lost with a preempted
    # node) and that then completed: Tune's saved status says how the trial ended.
    try:
        statuses = saved_statuses(str(tune_dir(exp_dir)))
    except (OSError, ValueError, KeyError):  # unreadable: the error files alone decide
        statuses = {}
    for folder in tune_dir(exp_dir).iterdir():
        match = TRIAL_DIR.match(folder.name)
        if not folder.is_dir() or not match:
            continue
        results = folder / "result.json"
        history = saved_reports(f"{train_root}/{match['id']}")
        history += (
            [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.is_file() else []
        )
        trials.append(
            StoredTrial(
                trial_id=match["id"],
                index=int(match["index"]),
                params=_json(folder / "params.json") or {},
                history=history,
                error=statuses.get(match["id"]) != "TERMINATED"
                and ((folder / "error.txt").is_file() or (folder / "error.pkl").is_file()),
                config=_json(folder / "trial_config.json"),
                resources=_json(folder / "trial_resources.json"),
                restarts=saved_restarts(f"{train_root}/{match['id']}"),
                ds_config=_json(folder / "ds_config.json"),
            )
        )
    return sorted(trials, key=lambda t: t.index)


def write_starts(exp_dir: Path, starts: list[tuple[str, dict[str, Any]]]) -> None:
    """(origin, params) of each configuration tried first (spaces.start_points)."""
    (exp_dir / STARTS).write_text(json.dumps([{"origin": o, "params": p} for o, p in starts], indent=1))


def read_starts(exp_dir: Path) -> list[dict[str, Any]]:
    return _json(exp_dir / STARTS) or []


def start_origin(starts: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """Where a trial's configuration came from when it was tried first (enqueued, a training-log
    warm start; `starts` as read_starts gives them); "" for a sampled one. A start point may fix
    only some keys (the rest sampled)."""
    for start in starts:
        if all(params.get(key) == value for key, value in start["params"].items()):
            return str(start["origin"])
    return ""


def min_stop_rate(exp_dir: Path) -> float:
    """The experiment's stop-rate constraint (tune.min_stop_rate of the space it ran)."""
    from gpt4all_ray.config import load_spec

    space = exp_dir / SPACE_COPY
    return load_spec(space).tune.min_stop_rate if space.is_file() else 0.0


def load_study(storage_url: str, study_name: str) -> Any:
    """The experiment's study: by its name, or the only study in the storage (a renamed or copied
    experiment folder); None when there is none."""
    import optuna

    names = optuna.get_all_study_names(storage_url)
    if study_name not in names:
        if len(names) != 1:
            return None
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage_url)


def searcher_values(study: Any) -> dict[str, float | None]:
    """Ray trial id -> the value the Optuna study holds for it (TellingOptunaSearch records the id)."""
    if study is None:
        return {}
    return {t.user_attrs["ray_trial_id"]: t.value for t in study.trials if "ray_trial_id" in t.user_attrs}
