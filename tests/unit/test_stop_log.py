"""Who stopped a trial in the driver: each deciding object writes the stop log, and the leaderboard
and progress lines name it (instead of "stopped" / "ASHA, going by the config")."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from gpt4all_ray.config import load_spec
from gpt4all_ray.divergence import DivergencePolicy
from gpt4all_ray.evaluation import StopReason
from gpt4all_ray.experiment.records import record_from_history
from gpt4all_ray.experiment.stop_log import EVERY_TRIAL, read_stops, record_stop, stopped_by
from gpt4all_ray.search.progress import stopper_description
from gpt4all_ray.search.stopping import DivergenceStopper, GpuHourBudget, RecordedASHA
from tests.unit.test_divergence import result
from tests.unit.test_results import epochs

DIVERGED, NON_FINITE = StopReason.DIVERGED, StopReason.NON_FINITE
ASHA, GPU_HOURS = StopReason.ASHA, StopReason.GPU_HOURS

DEFAULT = Path(__file__).resolve().parents[2] / "search_spaces" / "tiny_cpu.yaml"

# Final losses of 6 trials, 4 epochs each, fed one after another: ASHA (rungs at 1 and 3) stops
# the ones behind at a rung; the first and the best run to max_t.
CURVES = {
    "t0": [3.0, 2.8, 2.7, 2.6],
    "t1": [3.5, 3.4, 3.3, 3.2],
    "t2": [2.9, 2.7, 2.5, 2.4],
    "t3": [3.6, 3.5, 3.4, 3.3],
    "t4": [2.95, 2.9, 2.85, 2.8],
    "t5": [2.5, 2.3, 2.2, 2.1],
}


def feed(scheduler: ASHAScheduler, trials: list[str] | None = None) -> set[str]:
    """Each curve (of `trials`, default all) through the scheduler as Tune feeds it; the trials it
    stopped before max_t."""
    stopped = set()
    for trial_id in trials or list(CURVES):
        curve = CURVES[trial_id]
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)  # type: ignore[arg-type]
        best = float("inf")
        for epoch, loss in enumerate(curve, start=1):
            best = min(best, loss)
            last = {"epoch_progress": float(epoch), "best_val_loss": best}
            if scheduler.on_trial_result(None, trial, last) == TrialScheduler.STOP:  # type: ignore[arg-type]
                if epoch < 4:
                    stopped.add(trial_id)
                break
        scheduler.on_trial_complete(None, trial, last)  # type: ignore[arg-type]
    return stopped


def asha_kwargs() -> dict:
    return {"metric": "best_val_loss", "mode": "min", "time_attr": "epoch_progress", "max_t": 4, "grace_period": 1}


def test_recorded_asha_logs_exactly_the_trials_rays_asha_stops_early(tmp_path: Path) -> None:
    plain = feed(ASHAScheduler(reduction_factor=3, **asha_kwargs()))
    recorded_asha = RecordedASHA(exp_dir=tmp_path, reduction_factor=3, **asha_kwargs())
    assert feed(recorded_asha) == plain
    assert plain and plain < set(CURVES)  # some stopped, some ran to max_t: the case is not trivial
    assert {t for t in CURVES if stopped_by(read_stops(tmp_path), t) == ASHA} == plain
    assert isinstance(pickle.loads(pickle.dumps(recorded_asha)), RecordedASHA)  # saved with the experiment


def test_asha_rungs_survive_a_killed_driver_and_resume(tmp_path: Path) -> None:
    """Tuner.restore brings the scheduler back as pickled at the start (Ray 2.60 saves no scheduler
    state): ASHA's rungs come back from the experiment folder, and the trials after the resume are
    judged as in an uninterrupted search."""
    uninterrupted = feed(ASHAScheduler(reduction_factor=3, **asha_kwargs()))
    before, after = list(CURVES)[:3], list(CURVES)[3:]

    started = RecordedASHA(exp_dir=tmp_path, reduction_factor=3, **asha_kwargs())
    at_start = pickle.dumps(started)  # what tuner.pkl holds
    killed = feed(started, before)
    resumed = feed(pickle.loads(at_start), after)
    assert killed | resumed == uninterrupted
    assert resumed  # the resumed driver stopped trials, as the uninterrupted one did
    # Ray's own ASHA restored the same way judges the later trials against empty rungs.
    plain = ASHAScheduler(reduction_factor=3, **asha_kwargs())
    plain_at_start = pickle.dumps(plain)
    feed(plain, before)
    assert feed(pickle.loads(plain_at_start), after) != resumed


def test_stoppers_log_their_decisions_once_per_trial_or_search(tmp_path: Path) -> None:
    stopper = DivergenceStopper(DivergencePolicy(), tmp_path)
    assert stopper("a", result(10, 3.0)) is False and stopper("a", result(20, 3.2)) is True
    stopper("a", result(20, 3.2))  # reported again after a restore: judged already, not logged again
    assert stopper("n", result(10, float("nan"))) is True
    budget = GpuHourBudget(hours=1.0, gpus_per_trial=4, exp_dir=tmp_path)
    budget("b", {"time_total_s": 1000.0})
    assert budget.stop_all() is True and budget.stop_all() is True
    lines = (tmp_path / "stops.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert read_stops(tmp_path) == {"a": DIVERGED, "n": NON_FINITE, EVERY_TRIAL: GPU_HOURS}
    assert stopped_by(read_stops(tmp_path), "c") == GPU_HOURS  # a trial the budget ended
    assert stopped_by({}, "c") is None


def test_stoppers_pickled_before_the_stop_log_still_run(tmp_path: Path) -> None:
    budget = GpuHourBudget(hours=1.0, gpus_per_trial=4)
    del budget.exp_dir, budget.spent  # as restored from an experiment state written before them
    budget("b", {"time_total_s": 1000.0})
    assert budget.stop_all() is True
    assert not (tmp_path / "stops.jsonl").exists()


def test_leaderboard_reason_is_the_workers_then_the_stop_log_then_stopped() -> None:
    ran_on = epochs([3.0, 2.9], ["", ""])
    assert record_from_history("t", {}, ran_on, error=False, stopped_by=ASHA).stop_reason == ASHA
    assert record_from_history("t", {}, ran_on, error=False).stop_reason == "stopped"
    finished = epochs([3.0, 2.9], ["", "completed"])
    assert record_from_history("t", {}, finished, error=False, stopped_by=GPU_HOURS).stop_reason == "completed"


def test_progress_names_what_stopped_the_trial(tmp_path: Path) -> None:
    spec = load_spec(DEFAULT)
    record_stop(tmp_path, "x", ASHA, epoch=1.0)
    assert stopper_description(spec, stopped_by(read_stops(tmp_path), "x")).startswith("ASHA (not in the best 1/3")
    assert stopper_description(spec, None) == "Tune"
    assert stopper_description(spec, GPU_HOURS).startswith("the GPU-hour budget")
