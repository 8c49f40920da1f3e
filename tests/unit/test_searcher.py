"""The searcher on a real Optuna study in SQLite: the stop-rate constraint told to TPE, and a
trial that never had a finite loss told as a failure."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest

from gpt4all_ray.config import load_spec
from gpt4all_ray.searcher import make_searcher
from gpt4all_ray.spaces import param_space

REPO = Path(__file__).resolve().parents[2]


def test_searcher_tells_tpe_the_stop_rate_constraint(tmp_path: Path) -> None:
    """The real searcher (Ray's OptunaSearch subclass) on a real SQLite study: a trial below the
    required stop rate is infeasible for TPE, one above is feasible."""
    spec = load_spec(REPO / "search_spaces" / "tiny_cpu.yaml")
    spec = dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, min_stop_rate=0.9))
    searcher = make_searcher(spec, tmp_path / "exp", "best_val_loss", None)
    searcher.set_search_properties("best_val_loss", "min", param_space(spec))
    for trial_id, stop_rate in (("a", 0.5), ("b", 1.0)):
        assert searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"best_val_loss": 3.0, "probe_stop_rate": stop_rate})
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'exp' / 'optuna.db'}")
    constraints = [t.constraints["min_stop_rate"] for t in study.trials]
    assert constraints == [pytest.approx(0.4), pytest.approx(-0.1)]  # feasible when <= 0


def test_a_trial_without_any_finite_loss_is_a_failure_for_optuna(tmp_path: Path) -> None:
    spec = load_spec(REPO / "search_spaces" / "tiny_cpu.yaml")
    searcher = make_searcher(spec, tmp_path / "exp", "best_val_loss", None)
    searcher.set_search_properties("best_val_loss", "min", param_space(spec))
    for trial_id, best in (("finite", 3.2), ("never_finite", math.inf)):
        assert searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"best_val_loss": best, "stop_reason": "non_finite"})
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'exp' / 'optuna.db'}")
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 3.2), ("FAIL", None)]
    assert study.trials[1].user_attrs["stop_reason"] == "non_finite"
