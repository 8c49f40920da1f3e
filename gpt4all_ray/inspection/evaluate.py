"""Recompute a saved checkpoint's validation loss from its files alone.

`gpt4all-ray evaluate runs/<experiment>/best` rebuilds the trial's validation split
from trial_config.json, tokenizes it with the checkpoint's own tokenizer, and prints the
token-weighted loss: it must equal the best_val_loss the search recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.inspection.device import ON_CPU, Inference, add_flags, from_flags


def load_checkpoint(folder: Path, inference: Inference = ON_CPU) -> tuple[Any, Any, TrialConfig]:
    """(model, tokenizer, trial config), the model placed and cast as `inference` says; a PEFT
    adapter is loaded onto its rebuilt base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TrialConfig(**json.loads((folder / "trial_config.json").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        from gpt4all_ray.train.model import build_model

        base = build_model(dataclasses.replace(cfg, method="full"), tokenizer)
        model: Any = PeftModel.from_pretrained(base, folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=inference.torch_dtype())
    return inference.place(model), tokenizer, cfg


def validation_loss(folder: Path, inference: Inference = ON_CPU) -> float:
    import torch

    from gpt4all_ray.data import load_split
    from gpt4all_ray.data.collate import pad_to_longest
    from gpt4all_ray.data.encode import encode_rows
    from gpt4all_ray.train.loss import loss_sum_and_count

    model, tokenizer, cfg = load_checkpoint(folder, inference)
    examples, _ = encode_rows(load_split(cfg).val, tokenizer, cfg.max_length, cfg.length_policy, cfg.prompt_format)
    total = torch.zeros(2, dtype=torch.float64, device=inference.device)
    size = inference.batch_size
    with torch.no_grad():
        for i in range(0, len(examples), size):
            batch = pad_to_longest(examples[i : i + size], tokenizer.pad_token_id)
            on_device = {k: v.to(inference.device) for k, v in batch.items()}
            total += torch.stack(loss_sum_and_count(model, on_device)).double()
    return (total[0] / total[1]).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt4all-ray evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    add_flags(p)
    args = p.parse_args(argv)
    try:
        inference = from_flags(args)
    except ValueError as err:
        p.error(str(err))
    loss = validation_loss(args.checkpoint, inference)
    result = {"checkpoint": str(args.checkpoint), "val_loss": loss, "val_ppl": math.exp(loss)}
    print(json.dumps(result | {"device": inference.device, "dtype": inference.dtype}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
