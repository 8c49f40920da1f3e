"""The replays in benchmarks/search_efficiency.py, which report what the divergence stopper and
ASHA would save on random search's trials, against the real policy and Ray's real scheduler."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from gpt4all_ray.divergence import DivergencePolicy
from tests.unit.benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("search_efficiency")


def random_curves(seed: int, trials: int = 12, max_epochs: int = 4) -> list[list[tuple[float, float]]]:
    """Trials of 2 to max_epochs epochs; losses that mostly fall, sometimes rise."""
    rng = random.Random(seed)
    curves = []
    for _ in range(trials):
        loss, curve = rng.uniform(3, 5), []
        for epoch in range(1, rng.randint(2, max_epochs) + 1):
            loss *= rng.uniform(0.8, 1.1)
            curve.append((float(epoch), loss))
        curves.append(curve)
    return curves


def ray_asha_cuts(curves: list[list[tuple[float, float]]], grace: float, reduction: int, max_t: int) -> list[int]:
    """Each curve fed, one trial after another, through Ray's ASHAScheduler as Tune feeds it."""
    asha = ASHAScheduler(
        metric="best_val_loss", mode="min", time_attr="epoch_progress", max_t=max_t,
        grace_period=grace, reduction_factor=reduction,
    )  # fmt: skip
    cuts = []
    for n, curve in enumerate(curves):
        trial = SimpleNamespace(trial_id=f"t{n}")
        asha.on_trial_add(None, trial)  # type: ignore[arg-type]
        best, cut = math.inf, len(curve)
        for i, (epoch, loss) in enumerate(curve, start=1):
            best = min(best, loss)
            result = {"epoch_progress": epoch, "best_val_loss": best}
            if asha.on_trial_result(None, trial, result) == TrialScheduler.STOP and epoch < max_t:  # type: ignore[arg-type]
                cut = i
                break
        asha.on_trial_complete(None, trial, result)  # type: ignore[arg-type]
        cuts.append(cut)
    return cuts


def test_asha_milestones_are_rays(bench: ModuleType) -> None:
    asha = ASHAScheduler(metric="m", mode="min", max_t=4, grace_period=1, reduction_factor=3)
    rays = sorted(m for m, _ in asha._brackets[0]._rungs)
    assert bench.asha_milestones(1.0, 3, 4) == rays == [1, 3]
    assert bench.asha_milestones(1.0, 2, 8) == [1, 2, 4]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("reduction", [2, 3])
def test_asha_replay_stops_where_rays_scheduler_stops(bench: ModuleType, seed: int, reduction: int) -> None:
    curves = random_curves(seed)
    cuts = bench.asha_cuts(curves, bench.asha_milestones(1.0, reduction, 4), reduction)
    assert cuts == ray_asha_cuts(curves, 1.0, reduction, 4)
    assert any(cut < len(curve) for cut, curve in zip(cuts, curves, strict=True))  # the case is not trivial


def test_stopper_replay_cuts_at_the_first_rise_and_keeps_the_best(bench: ModuleType) -> None:
    curves = [[(1.0, 4.0), (2.0, 3.5), (3.0, 3.7), (4.0, 3.0)], [(1.0, 3.9), (2.0, 3.6)]]
    full, stopped, best_full, best_stopped = bench.replay_stopper(curves, DivergencePolicy())
    assert (full, stopped) == (6.0, 5.0)  # the first trial stops at its epoch-3 rise
    assert (best_full, best_stopped) == (3.0, 3.5)  # and loses the epoch-4 recovery: regret 0.5


def test_a_run_that_misses_the_target_counts_its_whole_budget(bench: ModuleType) -> None:
    points = [bench.Evaluation("a", e, 10.0 * e, loss) for e, loss in [(1, 3.4), (2, 3.2), (3, 3.3), (5, 3.25)]]
    assert bench.to_target(points, 3.2) == bench.RunToTarget(True, 2, 20.0)
    assert bench.to_target(points, 3.1) == bench.RunToTarget(False, 5, 50.0)


def test_expected_running_time_is_all_compute_per_success(bench: ModuleType) -> None:
    run = bench.RunToTarget
    arm = [run(True, 4, 40.0), run(False, 10, 90.0), run(True, 6, 70.0)]
    baseline = [run(True, 8, 80.0), run(False, 12, 100.0), run(False, 12, 110.0)]
    assert bench.expected_running_time(arm, "epochs") == (4 + 10 + 6) / 2
    assert bench.expected_running_time(baseline, "worker_s") == 290.0
    assert bench.ert_ratio(arm, baseline, "epochs") == pytest.approx(10 / 32)
    assert bench.expected_running_time([run(False, 10, 90.0)], "epochs") == math.inf
    assert bench.ert_ratio([run(False, 3, 3.0)], [run(True, 3, 3.0)], "epochs") == math.inf
    assert math.isnan(bench.ert_ratio([run(False, 3, 3.0)], [run(False, 3, 3.0)], "epochs"))


def test_bootstrap_interval_holds_the_ratio_and_is_degenerate_for_identical_seeds(bench: ModuleType) -> None:
    run = bench.RunToTarget
    arm = [run(True, e, e) for e in (2, 3, 9, 4, 5, 12, 3, 2, 6, 4)]
    baseline = [run(i % 3 != 0, 10, 10.0) for i in range(10)]
    low, high = bench.bootstrap_interval(arm, baseline, "epochs")
    assert low < bench.ert_ratio(arm, baseline, "epochs") < high
    same = [run(True, 4, 4.0)] * 10
    assert bench.bootstrap_interval(same, same, "epochs") == (1.0, 1.0)


@pytest.mark.parametrize("space", ["tiny_cpu", "tiny_cpu_overfit"])
def test_every_arm_writes_a_space_the_product_accepts(bench: ModuleType, tmp_path: Path, space: str) -> None:
    from gpt4all_ray.config import load_spec

    specs = {arm: load_spec(bench.arm_space(tmp_path, arm, seed=3, trials=10, space=space)) for arm in bench.ARMS}
    assert {arm: (s.tune.searcher, s.tune.scheduler) for arm, s in specs.items()} == {
        "ours": ("tpe", ""),
        "gp": ("gp", ""),
        "gp_asha": ("gp", "asha"),
        "asha": ("tpe", "asha"),
        "asha_x2": ("tpe", "asha"),
        "random": ("random", ""),
    }
    assert [specs[arm].tune.num_trials for arm in bench.ARMS] == [10, 10, 10, 10, 20, 10]
    assert all(s.tune.seed == 3 for s in specs.values())
    assert [arm for arm, s in specs.items() if not s.fixed.stop_on_divergence] == ["random"]
