"""Where `evaluate` and `analyze` run a checkpoint: on a GPU when there is one, in bf16 there, so a
6-7B checkpoint fits (28 GB in fp32 on the host would not be the way to score it); on the CPU in
fp32, which is also what reproduces the loss a CPU search recorded to the last digits."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Inference:
    device: str
    """cpu, cuda or cuda:N."""
    dtype: str
    """fp32, bf16 or fp16: what the weights are cast to."""
    batch_size: int

    def torch_dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    def place(self, model: Any) -> Any:
        return model.to(device=self.device, dtype=self.torch_dtype()).eval()


ON_CPU = Inference("cpu", "fp32", 16)


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--batch-size", type=int, default=16, help="rows a forward pass (default 16)")


def from_flags(args: argparse.Namespace) -> Inference:
    """The flags resolved; ValueError naming the flag for what cannot run here."""
    import torch

    gpu = torch.cuda.is_available()
    device = ("cuda" if gpu else "cpu") if args.device == "auto" else args.device
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {args.device}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not gpu:
        raise ValueError(f"--device {args.device}: no GPU is visible here (torch.cuda.is_available() is False)")
    index = device.removeprefix("cuda:") if device.startswith("cuda:") else "0"
    if device != "cpu" and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {args.device}: this machine has GPUs cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    dtype = ("bf16" if device != "cpu" else "fp32") if args.dtype == "auto" else args.dtype
    if dtype == "fp16" and device == "cpu":
        raise ValueError("--dtype fp16: half precision needs a GPU here; use bf16 or fp32 on the CPU")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected at least 1")
    return Inference(device, dtype, args.batch_size)
