"""Validated search spec -> Ray Tune parameter space and the points enqueued as first trials."""

from __future__ import annotations

from dataclasses import dataclass
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


ENQUEUED = "enqueued"


@dataclass(frozen=True)
class StartPoint:
    """A configuration tried before the searcher samples: where it comes from, and its values."""

    origin: str
    """ENQUEUED (the space's `enqueue` list) or "training log: <the logged run>"."""
    params: dict[str, Any]


def start_points(spec: SearchSpec, train_rows: int) -> list[StartPoint]:
    """Configurations tried first, in order: the space's `enqueue` list, then (with
    tune.warm_start: training_log) GPT4All's logged runs mapped into the space; no point twice."""
    from gpt4all_ray.search.warm_starts import TRAINING_LOG, from_training_log

    points = [StartPoint(ENQUEUED, dict(point)) for point in spec.enqueue]
    if spec.tune.warm_start == "training_log":
        logged = from_training_log(spec, train_rows, spec.tune.scale_lr_by_batch)
        points += [
            StartPoint(f"training log: {run.name}", point) for run, point in zip(TRAINING_LOG, logged, strict=True)
        ]
    unique: list[StartPoint] = []
    for point in points:
        if all(point.params != kept.params for kept in unique):
            unique.append(point)
    return unique
