"""What the workers report beside the validation loss."""

from __future__ import annotations

import math

import pytest

from gpt4all_ray.train.loop import perplexity


def test_perplexity_is_reported_only_where_it_is_a_finite_number() -> None:
    assert perplexity(math.log(24.09)) == pytest.approx(24.09)
    assert perplexity(49.0) == pytest.approx(math.exp(49.0))
    assert perplexity(50.0) is perplexity(float("inf")) is perplexity(float("nan")) is None
