"""The sampled learning rate and weight decay must be what the optimizer holds."""

from __future__ import annotations

import pytest
import torch

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.worker import HyperparameterMismatch, _param_groups, check_hyperparameters


def optimizer(weight_decay: float, lr: float = 1e-3) -> torch.optim.Optimizer:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)


def test_decay_only_on_matrices() -> None:
    groups = optimizer(0.1).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])


def test_matching_optimizer_passes() -> None:
    check_hyperparameters(optimizer(0.1, lr=2e-3), TrialConfig(learning_rate=4e-3, weight_decay=0.1), 0.5)


def test_weight_decay_that_never_reached_the_optimizer_fails() -> None:
    with pytest.raises(HyperparameterMismatch, match="weight decay 0.0 in the optimizer, 0.1 wanted"):
        check_hyperparameters(optimizer(0.0), TrialConfig(learning_rate=1e-3, weight_decay=0.1), 1.0)


def test_lora_has_no_empty_group() -> None:
    model = torch.nn.Linear(4, 4)
    model.bias.requires_grad_(False)
    assert [g["name"] for g in _param_groups(model, 0.1)] == ["decay"]


def test_wrong_learning_rate_fails() -> None:
    with pytest.raises(HyperparameterMismatch, match="lr"):
        check_hyperparameters(optimizer(0.0, lr=1e-3), TrialConfig(learning_rate=5e-5, weight_decay=0.0), 1.0)
