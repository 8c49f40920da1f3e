"""benchmarks/worker_overhead.py's pairing of each run with the bare runs around it: a machine
that slows down between runs must not show up as overhead."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.unit.benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("worker_overhead")


def rows(bare: list[float], ray: list[float]) -> list[dict[str, object]]:
    """bare-0, ray-0, bare-1, ray-1, ..., the closing bare run."""
    out: list[dict[str, object]] = []
    for repeat, speed in enumerate(bare):
        out.append({"arm": "bare", "repeat": repeat, "tokens_per_s": speed})
        if repeat < len(ray):
            out.append({"arm": "ray", "repeat": repeat, "tokens_per_s": ray[repeat]})
    return out


def test_a_steady_drift_cancels_between_the_bare_runs_around(bench: ModuleType) -> None:
    # The machine loses 10% a run-pair; the product runs at 0.96 of bare at the same moment.
    bare = [1000.0 * 0.9**i for i in range(4)]
    ray = [0.96 * 1000.0 * 0.9 ** (i + 0.5) for i in range(3)]
    ratios = bench.ratios_to_bare(rows(bare, ray), "ray")
    assert len(ratios) == 3
    assert all(r == pytest.approx(0.96, abs=0.003) for r in ratios)
    # The bare run before alone sees the drift as overhead.
    before = bench.ratios_to_bare(rows(bare, ray), "ray", around=False)
    assert before == pytest.approx([0.911] * 3, abs=0.001)


def test_a_run_without_a_bare_run_after_it_uses_the_one_before(bench: ModuleType) -> None:
    ratios = bench.ratios_to_bare(rows([1000.0, 1200.0], [950.0, 1100.0]), "ray")
    assert ratios == pytest.approx([950.0 / 1100.0, 1100.0 / 1200.0])


def test_the_bootstrap_interval_holds_the_median_and_narrows_with_more_runs(bench: ModuleType) -> None:
    few = [0.90, 0.97, 1.02, 0.95, 0.99]
    many = few * 6
    low, high = bench.bootstrap_median(few)
    assert low <= 0.97 <= high
    low_many, high_many = bench.bootstrap_median(many)
    assert low <= low_many <= 0.97 <= high_many <= high
    assert high_many - low_many < high - low
