"""Every file in search_spaces/ loads, yields a Ray Tune parameter space and warm-start points
inside that space (one test over the folder: a new file is checked without a new test); the
GPT4All spaces start with the training log's published configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt4all_ray.config import load_spec
from gpt4all_ray.search.spaces import param_space, start_points

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))

# From the training log (../shared/design/TRAINING_LOG.md): what the first trial must be.
PUBLISHED = {
    "gpt4all_lora_llama7b": (
        {
            "model": "huggyllama/llama-7b",
            "method": "lora",
            "per_device_batch": 4,
            "global_batch": 32,
            "max_length": 1024,
        },
        {"learning_rate": 5e-5, "warmup_steps": 100, "weight_decay": 0.0},
    ),
    "gpt4allj_full_gptj6b": (
        {"model": "EleutherAI/gpt-j-6b", "method": "full", "per_device_batch": 32, "global_batch": 256},
        {"learning_rate": 2e-5, "epochs": 2, "warmup_steps": 500, "lr_schedule": "constant_with_warmup"},
    ),
    "gpt4allj_lora_gptj6b": (
        {"model": "EleutherAI/gpt-j-6b", "method": "lora", "global_batch": 32},
        {"learning_rate": 2e-5, "warmup_steps": 500, "lr_schedule": "constant_with_warmup"},
    ),
}


def inside(dist, value) -> bool:  # noqa: ANN001
    if dist.kind == "choice":
        return value in dist.args
    low, high = dist.args
    return low <= value <= high


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_space_loads_with_a_tune_space_and_warm_starts_inside_it(path: Path) -> None:
    spec = load_spec(path)
    space = param_space(spec)
    assert set(space) == set(spec.search) and all(hasattr(d, "sample") for d in space.values())
    for start in start_points(spec, train_rows=10_000):
        assert set(start.params) == set(spec.search)
        for key, value in start.params.items():
            assert inside(spec.search[key], value), f"{path.name}: warm start {key}={value} outside the space"


def test_the_gpt4all_spaces_start_with_the_published_configuration() -> None:
    by_name = {load_spec(p).name: load_spec(p) for p in SPACES}
    assert set(PUBLISHED) <= set(by_name)
    for name, (fixed, first) in PUBLISHED.items():
        spec = by_name[name]
        assert {k: getattr(spec.fixed, k) for k in fixed} == fixed, name
        assert {k: spec.enqueue[0][k] for k in first} == first, name
        workers, gpus = spec.resources.workers_per_trial, spec.resources.gpus_per_worker
        assert workers * gpus == 8 and spec.fixed.precision == "bf16", name  # 8 x A100 a trial
        assert spec.fixed.global_batch == spec.fixed.per_device_batch * workers  # as the log: no accumulation
        assert spec.fixed.collate == "pack", name  # the log padded to max length: same losses, ~2x the slots
