"""`python -m gpt4all_ray.tune --space X --dry-run`: what a search will cost, without starting Ray.

GPU-hours come from a throughput model with every assumption printed: model FLOPs per token
(throughput.py's accounting: 6 per trained weight, 4 per frozen one, plus attention) times the
tokens each trial trains on (epochs x tokens per epoch), divided by the GPU's peak times an
assumed model FLOPs utilisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all_ray.config import EMBEDDED_DATA, EMBEDDED_MODELS, SearchSpec
from gpt4all_ray.experiment.storage import human_bytes
from gpt4all_ray.train.ds_config import deepspeed_config
from gpt4all_ray.train.throughput import PEAK_TFLOPS, FlopModel

# Shapes of the models the GPT4All spaces name (their config.json), so that a plan needs no Hub.
KNOWN_MODELS = {
    "EleutherAI/gpt-j-6b": {"params": 6_053_381_344, "layers": 28, "width": 4096},
    "huggyllama/llama-7b": {"params": 6_738_415_616, "layers": 32, "width": 4096},
}
LORA_TRAINABLE_SHARE = 0.001  # q/v adapters at r=8 on a 6-7B model: ~4M of ~6.7B weights


@dataclass(frozen=True)
class Assumptions:
    cluster_gpus: int = 16
    gpu: str = "A100"
    mfu: float = 0.35
    usd_per_gpu_hour: float = 4.10
    rows: int = 400_000
    """Training rows when the data cannot be read here (GPT4All's final set: ~400k)."""
    tokens_per_row: float = 0.45 * 1024
    """Mean non-pad tokens a row (GPT4All's rows: about 45% of max length 1024)."""


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes of one checkpoint: the exported model (what a finished trial keeps) and the state that
    resumes the run (the trained weights, their fp32 master copy and Adam's two moments)."""

    model: float
    resume: float

    @property
    def total(self) -> float:
        return self.model + self.resume


def checkpoint_size(params: float, trainable: float, precision: str, method: str) -> CheckpointSize:
    # DeepSpeed saves the trained weights in the training precision (frozen ones are left out:
    # checkpoint.save_state), mixed precision adds their fp32 master copy, Adam two fp32 moments.
    module = 2 if precision in ("bf16", "fp16") else 4
    master = 4 if module == 2 else 0
    exported = trainable if method == "lora" else params
    return CheckpointSize(model=exported * module, resume=trainable * (module + master + 8))


def peak_storage(size: CheckpointSize, trials: int, concurrency: int, keep_resume_state: bool) -> float:
    """At most: each running trial holds its best and latest checkpoint and writes the next; each
    finished one keeps its best (and latest) with their resume state, or its exported model alone."""
    running = min(trials, concurrency)
    finished = trials - running
    return running * 3 * size.total + finished * (2 * size.total if keep_resume_state else size.model)


@dataclass(frozen=True)
class Plan:
    trials: int
    gpus_per_trial: float
    concurrency: int
    tokens_per_epoch: float
    flops_per_token: float
    gpu_seconds_per_epoch: float
    epochs_per_trial_max: int
    gpu_hours_max: float
    wall_hours_max: float
    cost_usd_max: float
    checkpoint: CheckpointSize
    peak_storage_bytes: float
    sample_ds_config: dict[str, Any]
    lines: list[str]


def model_shape(spec: SearchSpec, tokenizer_size: int | None = None) -> dict[str, float]:
    """Weights, layers and width: from the table, or counted on the meta device (no memory, no
    download) for a built-in model or a local Hugging Face folder."""
    name = spec.fixed.model
    if name in KNOWN_MODELS:
        return dict(KNOWN_MODELS[name])
    if name not in EMBEDDED_MODELS and not (Path(name) / "config.json").is_file():
        raise ValueError(
            f"{spec.path}: fixed.model: no shape known for {name!r} to plan with: give a local model folder "
            f"or one of {', '.join([*KNOWN_MODELS, *EMBEDDED_MODELS])}"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gpt4all_ray.train.model import padded_vocab, tiny_config

    if name in EMBEDDED_MODELS:
        config = tiny_config(name, padded_vocab(tokenizer_size or 4096))
    else:
        config = AutoConfig.from_pretrained(name, trust_remote_code=spec.fixed.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    from gpt4all_ray.train.throughput import flop_model

    counted = flop_model(model)
    return {"params": counted.weights, "layers": counted.layers, "width": counted.width}


def count_train_tokens(spec: SearchSpec) -> tuple[float, int] | None:
    """Non-pad tokens of one epoch's training rows and the tokenizer's size, when the data and
    tokenizer are readable here (embedded or local data, built-in or local model); else None."""
    cfg = spec.fixed
    readable_data = cfg.data == EMBEDDED_DATA or Path(cfg.data).exists()
    readable_model = cfg.model in EMBEDDED_MODELS or Path(cfg.model).is_dir()
    if not (readable_data and readable_model):
        return None
    from gpt4all_ray.data import load_split
    from gpt4all_ray.data.encode import encode_rows
    from gpt4all_ray.data.tokenizer import load_tokenizer

    data = load_split(cfg)
    tokenizer = load_tokenizer(cfg, data)
    # A searched max_length: the longest, for an upper bound.
    examples, _ = encode_rows(data.train, tokenizer, spec.largest("max_length"), cfg.length_policy, cfg.prompt_format)
    # An epoch is whole global batches of a shuffled order: the rows' mean, times the rows used.
    used = len(examples) // cfg.global_batch * cfg.global_batch
    return sum(len(e.input_ids) for e in examples) / len(examples) * used, len(tokenizer)


def make_plan(
    spec: SearchSpec, assume: Assumptions, train_tokens: float | None = None, tokenizer_size: int | None = None
) -> Plan:
    res, cfg = spec.resources, spec.fixed
    if res.gpus_per_worker == 0:
        raise ValueError(f"{spec.path}: resources.gpus_per_worker: 0, a CPU space; the dry run estimates GPU time")
    shape = model_shape(spec, tokenizer_size)
    trainable = shape["params"] * (LORA_TRAINABLE_SHARE if cfg.method == "lora" else 1.0)
    flops = FlopModel(int(shape["params"]), int(trainable), int(shape["layers"]), int(shape["width"]))
    context = spec.largest("max_length")
    per_token = flops.per_token(context)
    tokens = train_tokens if train_tokens is not None else assume.rows * (1 - cfg.val_fraction) * assume.tokens_per_row
    peak = PEAK_TFLOPS[assume.gpu][cfg.precision] * 1e12
    gpu_seconds_per_epoch = tokens * per_token / (assume.mfu * peak)
    epochs = spec.max_epochs
    gpus_per_trial = res.gpus_per_trial
    concurrency = max(1, min(spec.tune.max_concurrent, int(assume.cluster_gpus // gpus_per_trial)))
    gpu_hours = spec.tune.num_trials * epochs * gpu_seconds_per_epoch / 3600
    wall_hours = gpu_hours / (concurrency * gpus_per_trial)
    size = checkpoint_size(shape["params"], trainable, cfg.precision, cfg.method)
    keep = spec.tune.keep_resume_state
    peak_bytes = peak_storage(size, spec.tune.num_trials, concurrency, keep)
    sample = spec.enqueue[0] if spec.enqueue else {}
    ds = deepspeed_config(spec.trial_config(sample), res.workers_per_trial, spec.deepspeed_user)
    source = (
        "counted from the data"
        if train_tokens is not None
        else (f"assumed: {assume.rows:,} rows x (1 - {cfg.val_fraction}) x {assume.tokens_per_row:.0f} tokens a row")
    )
    lines = [
        f"Plan for {spec.name} ({spec.path}); nothing was started.",
        f"  trials: {spec.tune.num_trials}, up to {epochs} epochs each (the space's maximum: an upper bound)",
        f"  resources per trial: {res.workers_per_trial} workers x {res.gpus_per_worker:g} GPU "
        f"= {gpus_per_trial:g} GPUs{f' ({res.accelerator_type})' if res.accelerator_type else ''}, "
        f"{res.cpus_per_worker:g} CPUs a worker",
        f"  concurrency on {assume.cluster_gpus} GPUs: {concurrency} trial(s) at once "
        f"(tune.max_concurrent {spec.tune.max_concurrent})",
        f"  tokens per epoch: {tokens:,.0f} ({source})",
        f"  model FLOPs per token: {per_token:.3e} ({cfg.method}: {shape['params']:,.0f} weights, "
        f"{trainable:,.0f} trained, {shape['layers']:.0f} layers x {shape['width']:.0f}, context {context})",
        f"  throughput: {assume.mfu:.0%} MFU of {assume.gpu}'s {peak / 1e12:.0f} TFLOP/s ({cfg.precision}) "
        f"= {assume.mfu * peak / per_token:,.0f} tokens/s per GPU (assumed MFU)",
        f"  GPU-hours per trial-epoch: {gpu_seconds_per_epoch / 3600:,.1f}",
        f"  GPU-hours, all trials at most: {gpu_hours:,.0f} (ASHA and the divergence stopper cut this)",
        f"  wall time at most: {wall_hours:,.1f} h; cost at most: ${gpu_hours * assume.usd_per_gpu_hour:,.0f} "
        f"at ${assume.usd_per_gpu_hour:.2f} per GPU-hour (assumed)",
        f"  checkpoint: {human_bytes(size.total)} each, written at every evaluation (exported model "
        f"{human_bytes(size.model)} + resume state {human_bytes(size.resume)}: the {trainable:,.0f} trained "
        f"weights in {cfg.precision}, "
        + ("their fp32 master copy, " if cfg.precision != "fp32" else "")
        + "Adam's moments)",
        f"  storage at most: {human_bytes(peak_bytes)} (each running trial's best, latest and next "
        f"checkpoint; each finished trial's "
        + (
            "best and latest checkpoints: tune.keep_resume_state is set)"
            if keep
            else "exported model: its resume state is dropped)"
        ),
        "  DeepSpeed config of the first trial:",
        *("    " + line for line in json.dumps(ds, indent=2).splitlines()),
    ]
    return Plan(
        trials=spec.tune.num_trials,
        gpus_per_trial=gpus_per_trial,
        concurrency=concurrency,
        tokens_per_epoch=tokens,
        flops_per_token=per_token,
        gpu_seconds_per_epoch=gpu_seconds_per_epoch,
        epochs_per_trial_max=epochs,
        gpu_hours_max=gpu_hours,
        wall_hours_max=wall_hours,
        cost_usd_max=gpu_hours * assume.usd_per_gpu_hour,
        checkpoint=size,
        peak_storage_bytes=peak_bytes,
        sample_ds_config=ds,
        lines=lines,
    )
