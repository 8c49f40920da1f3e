"""Model FLOPs per token (PaLM's accounting) and the known GPU peaks."""

from __future__ import annotations

import pytest

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.train.model import build_model
from gpt4all_ray.train.throughput import FlopModel, flop_model, known_peak_tflops


def test_per_token_flops_by_hand() -> None:
    full = FlopModel(weights=1000, trainable=1000, layers=2, width=8)
    assert full.per_token(context=16) == 6 * 1000 + 12 * 2 * 8 * 16
    lora = FlopModel(weights=1000, trainable=10, layers=2, width=8)
    assert lora.per_token(context=16) == 6 * 10 + 4 * 990 + 12 * 2 * 8 * 16


def test_flop_model_of_the_tiny_models_counts_matmul_weights_only() -> None:
    tokenizer = build_tokenizer(load_split(TrialConfig(data_rows=300)))
    for name in ("tiny-gptj", "tiny-llama"):
        model = build_model(TrialConfig(model=name), tokenizer)
        counted = flop_model(model)
        lookup = model.get_input_embeddings().weight.numel()
        assert counted.weights == sum(p.numel() for p in model.parameters()) - lookup
        assert counted.trainable == counted.weights and (counted.layers, counted.width) == (2, 64)
        lora = flop_model(build_model(TrialConfig(model=name, method="lora"), tokenizer))
        adapters = sum(
            p.numel()
            for n, p in build_model(TrialConfig(model=name, method="lora"), tokenizer).named_parameters()
            if "lora_" in n
        )
        assert lora.trainable == adapters and lora.weights == counted.weights + adapters


@pytest.mark.parametrize(
    ("device", "precision", "peak"),
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 PCIe", "fp16", 756.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
        ("NVIDIA GeForce RTX 4090", "bf16", None),
    ],
)
def test_known_peaks(device: str, precision: str, peak: float | None) -> None:
    assert known_peak_tflops(device, precision) == peak
