"""Model FLOPs per token and model FLOPs utilisation (MFU).

Model FLOPs count the useful work of a training step on the non-pad tokens (PaLM, appendix B):
2 FLOPs per weight per token forward, 4 backward (2 for activation gradients, 2 for weight
gradients), and 12 x layers x width x context for attention scores and values. Frozen weights
(LoRA) skip their weight gradients: 4 per token instead of 6. Recomputation under gradient
checkpointing is not counted: it is hardware work, not model work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Dense peak TFLOP/s per GPU (no sparsity), from NVIDIA's data sheets. fp32 is plain FP32: torch
# leaves TF32 matmuls off by default, and the loop does not turn them on.
PEAK_TFLOPS = {
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},  # SXM
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
}


def known_peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak of a known GPU by its torch device name ("NVIDIA H100 80GB HBM3"); most specific first."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_TFLOPS[key][precision]
    return None


@dataclass(frozen=True)
class FlopModel:
    weights: int
    """Weights that take part in matmuls (everything but the input embedding lookup)."""
    trainable: int
    layers: int
    width: int

    def per_token(self, context: int) -> float:
        frozen = self.weights - self.trainable
        return 6.0 * self.trainable + 4.0 * frozen + 12.0 * self.layers * self.width * context


def _numel(p: Any) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # ZeRO-3 partitions leave numel() == 0


def flop_model(model: Any) -> FlopModel:
    """Counted from the model before DeepSpeed wraps it (and under ZeRO-3 partitioning)."""
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
    weights = trainable = 0
    for p in model.parameters():
        if p is embedding and not tied:
            continue  # a lookup, not a matmul; when tied, the LM head uses it as a matmul
        weights += _numel(p)
        trainable += _numel(p) if p.requires_grad else 0
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    return FlopModel(weights, trainable, int(layers), int(width))
