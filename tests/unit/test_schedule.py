from __future__ import annotations

import math

import pytest

from gpt4all_ray.train.schedule import lr_multiplier


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine"])
def test_warmup_rises_linearly_to_peak(name: str) -> None:
    m = lr_multiplier(name, warmup_steps=4, total_steps=20)
    assert [m(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert m(4) == pytest.approx(1.0)


def test_after_warmup_shapes() -> None:
    const = lr_multiplier("constant_with_warmup", 10, 110)
    linear = lr_multiplier("linear", 10, 110)
    cosine = lr_multiplier("cosine", 10, 110)
    assert const(60) == const(109) == 1.0
    assert linear(60) == pytest.approx(0.5)
    assert linear(110) == pytest.approx(0.0)
    assert cosine(60) == pytest.approx(0.5)
    assert cosine(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_no_warmup_starts_at_peak() -> None:
    assert lr_multiplier("linear", 0, 10)(0) == 1.0


def test_unknown_schedule_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        lr_multiplier("exponential", 0, 10)
