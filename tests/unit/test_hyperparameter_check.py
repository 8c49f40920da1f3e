"""The sampled learning rate, schedule and weight decay must be what the optimizer and the
scheduler the engine steps hold; a planted mismatch fails with a clear error."""

from __future__ import annotations

import pytest
import torch

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.train.loop import HyperparameterMismatch, check_hyperparameters, param_groups
from gpt4all_ray.train.schedule import lr_multiplier

TOTAL = 100


def built(cfg: TrialConfig, weight_decay: float | None = None, lr: float | None = None, schedule: str | None = None):  # noqa: ANN201
    """What TrialRun builds, with an optional planted difference from cfg."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay = cfg.weight_decay if weight_decay is None else weight_decay
    optimizer = torch.optim.AdamW(param_groups(model, decay), lr=cfg.learning_rate if lr is None else lr)
    multiplier = lr_multiplier(schedule or cfg.lr_schedule, cfg.warmup_steps, TOTAL)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, lr_multiplier(cfg.lr_schedule, cfg.warmup_steps, TOTAL), scheduler


CFG = TrialConfig(learning_rate=4e-3, weight_decay=0.1, lr_schedule="cosine", warmup_steps=10)


def test_decay_only_on_matrices() -> None:
    groups = built(CFG)[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])


def test_matching_optimizer_and_schedule_pass() -> None:
    optimizer, multiplier, scheduler = built(CFG)
    check_hyperparameters(optimizer, CFG, multiplier, scheduler, TOTAL)


def test_weight_decay_that_never_reached_the_optimizer_fails() -> None:
    optimizer, multiplier, scheduler = built(CFG, weight_decay=0.0)
    with pytest.raises(HyperparameterMismatch, match="weight decay 0.0 in the optimizer, 0.1 wanted"):
        check_hyperparameters(optimizer, CFG, multiplier, scheduler, TOTAL)


def test_lora_has_no_empty_group() -> None:
    model = torch.nn.Linear(4, 4)
    model.bias.requires_grad_(False)
    assert [g["name"] for g in param_groups(model, 0.1)] == ["decay"]


def test_wrong_learning_rate_fails() -> None:
    optimizer, multiplier, scheduler = built(CFG, lr=5e-5)
    with pytest.raises(HyperparameterMismatch, match="lr"):
        check_hyperparameters(optimizer, CFG, multiplier, scheduler, TOTAL)


@pytest.mark.parametrize("planted", ["linear", "constant_with_warmup"])
def test_a_different_schedule_in_the_engine_fails(planted: str) -> None:
    optimizer, multiplier, scheduler = built(CFG, schedule=planted)
    with pytest.raises(HyperparameterMismatch, match=r"lr schedule: .* cosine with warmup 10 over 100 steps"):
        check_hyperparameters(optimizer, CFG, multiplier, scheduler, TOTAL)


def test_no_scheduler_in_the_engine_fails() -> None:
    optimizer, multiplier, _ = built(CFG)
    with pytest.raises(HyperparameterMismatch, match="no LR scheduler reached the engine; cosine was sampled"):
        check_hyperparameters(optimizer, CFG, multiplier, None, TOTAL)
