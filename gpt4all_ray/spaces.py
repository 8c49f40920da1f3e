"""Validated search spec -> Ray Tune parameter space and the points enqueued as first trials."""

from __future__ import annotations

from typing import Any

from gpt4all_ray.config import Distribution, SearchSpec


def tune_domain(dist: Distribution) -> Any:
    from ray import tune

    low, high = (dist.args + (None, None))[:2]
    if dist.kind == "loguniform":
        return tune.loguniform(low, high)
    if dist.kind == "uniform":
        return tune.uniform(low, high)
    if dist.kind == "int":
        return tune.randint(low, high + 1)  # YAML bounds are inclusive; Tune's upper is not
    if dist.kind == "choice":
        return tune.choice(list(dist.args))
    raise ValueError(f"unknown distribution {dist.kind!r}")


def param_space(spec: SearchSpec) -> dict[str, Any]:
    return {name: tune_domain(dist) for name, dist in spec.search.items()}


def warm_starts(spec: SearchSpec) -> list[dict[str, Any]]:
    """Enqueued configurations, tried first and in order (e.g. the training log's settings)."""
    return [dict(point) for point in spec.enqueue]
