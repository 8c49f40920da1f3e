"""Where `evaluate` and `analyze` run a checkpoint (inspection/device.py): the flags, what this
machine refuses, and a checkpoint scored in another dtype and batch size."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import load_split
from gpt4all_ray.data.tokenizer import load_tokenizer
from gpt4all_ray.inspection.device import Inference, add_flags, from_flags
from gpt4all_ray.inspection.evaluate import validation_loss
from gpt4all_ray.train.model import build_model


def flags(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_flags(p)
    return p.parse_args(list(argv))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU resolves")
def test_auto_is_the_cpu_in_fp32_without_a_gpu_and_a_gpu_is_refused_by_flag() -> None:
    assert from_flags(flags()) == Inference("cpu", "fp32", 16)
    assert from_flags(flags("--dtype", "bf16", "--batch-size", "4")) == Inference("cpu", "bf16", 4)
    for argv, says in [
        (("--device", "cuda"), "--device cuda: no GPU is visible here"),
        (("--device", "tpu"), "--device tpu: expected auto, cpu, cuda or cuda:N"),
        (("--device", "cuda0"), "--device cuda0: expected auto, cpu, cuda or cuda:N"),
        (("--dtype", "fp16"), "--dtype fp16: half precision needs a GPU"),
        (("--batch-size", "0"), "--batch-size 0: expected at least 1"),
    ]:
        with pytest.raises(ValueError, match=says):
            from_flags(flags(*argv))


def test_a_checkpoint_scores_alike_in_bf16_and_any_batch_size(tmp_path: Path) -> None:
    cfg = TrialConfig(data_rows=300)
    tokenizer = load_tokenizer(cfg, load_split(cfg))
    torch.manual_seed(0)
    build_model(cfg, tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "trial_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    exact = validation_loss(tmp_path, Inference("cpu", "fp32", 16))
    assert validation_loss(tmp_path, Inference("cpu", "fp32", 3)) == pytest.approx(exact, rel=1e-6)
    in_bf16 = validation_loss(tmp_path, Inference("cpu", "bf16", 16))
    assert in_bf16 != exact and in_bf16 == pytest.approx(exact, rel=1e-2)  # cast, and still the same loss
