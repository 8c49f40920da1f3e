"""Trial config -> an explicit DeepSpeed config (no "auto" values, every number decided here),
with the user's own DeepSpeed file (fixed.deepspeed) merged over it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig


def gradient_accumulation(cfg: TrialConfig, world_size: int) -> int:
    per_step = cfg.per_device_batch * world_size
    if cfg.global_batch % per_step:
        raise ValueError(
            f"global_batch {cfg.global_batch} is not a multiple of per_device_batch x workers "
            f"= {cfg.per_device_batch} x {world_size}"
        )
    return cfg.global_batch // per_step


# fp16 needs a loss scale; these are DeepSpeed's documented dynamic-scaling values, spelled out
# so that the saved config says what ran.
FP16_LOSS_SCALING = {
    "enabled": True,
    "loss_scale": 0,  # 0 = dynamic
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}

# The DeepSpeed keys the space decides, with the settings they follow from: a user's file that
# sets one to another value would train something other than what the search samples and records.
# A sub-key not listed (overlap_comm, bucket sizes, fp16's loss-scale window, ...) is the user's.
DECIDED_BY: dict[str, tuple[str, ...]] = {
    "train_batch_size": ("global_batch",),
    "train_micro_batch_size_per_gpu": ("per_device_batch",),
    "gradient_accumulation_steps": ("global_batch", "per_device_batch"),
    "gradient_clipping": ("grad_clip",),
    "zero_optimization.stage": ("zero_stage",),
    "zero_optimization.offload_optimizer.device": ("offload_optimizer",),
    "zero_optimization.offload_param.device": ("offload_params",),
    "bf16.enabled": ("precision",),
    "bfloat16.enabled": ("precision",),  # DeepSpeed's other name for the bf16 section
    "fp16.enabled": ("precision",),
    # Ours is torch's AdamW with our LambdaLR, passed to deepspeed.initialize: these sections
    # would fight them (and the hyperparameter check reads the optimizer's groups).
    "optimizer": ("learning_rate", "weight_decay"),
    "scheduler": ("lr_schedule", "warmup_steps", "warmup_ratio"),
    "zero_allow_untested_optimizer": (),
    "zero_force_ds_cpu_optimizer": (),
}
UNSET = "(unset)"


def generated_config(cfg: TrialConfig, world_size: int) -> dict[str, Any]:
    """The config every number of which comes from the trial's settings."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # Saving a Hugging Face checkpoint needs the partitioned weights gathered on rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": cfg.per_device_batch,
        "gradient_accumulation_steps": gradient_accumulation(cfg, world_size),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": FP16_LOSS_SCALING if cfg.precision == "fp16" else {"enabled": False},
        # Our optimizer is torch's AdamW (the hyperparameter check reads its groups), so no
        # minutes-long JIT build of DeepSpeed's fused or CPU Adam; with offload it steps on the CPU.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # the loop logs; DeepSpeed's own step prints are noise
        "wall_clock_breakdown": False,
    }


def deepspeed_config(cfg: TrialConfig, world_size: int) -> dict[str, Any]:
    """The generated config with fixed.deepspeed's file merged over it; a key the space decides
    may only be set to the value the space gives it (DeepSpeedConflict otherwise)."""
    generated = generated_config(cfg, world_size)
    if not cfg.deepspeed:
        return generated
    user = read_user_config(Path(cfg.deepspeed))
    conflicts = [c for c in decided_keys(user, generated) if c.ours != c.theirs]
    if conflicts:
        raise DeepSpeedConflict(cfg.deepspeed, conflicts[0].describe(cfg))
    return merged(generated, user)


class DeepSpeedConflict(ValueError):
    """The user's DeepSpeed file sets a key the space decides to another value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


class UserKey:
    """A key of the user's file that the space decides: its value there and in the generated config."""

    def __init__(self, path: str, theirs: Any, ours: Any) -> None:
        self.path, self.theirs, self.ours = path, theirs, ours

    @property
    def settings(self) -> tuple[str, ...]:
        return DECIDED_BY[self.path]

    def describe(self, cfg: TrialConfig) -> str:
        theirs = f"sets {self.path} = {json.dumps(self.theirs)}"
        if not self.settings:
            return f"{theirs}; gpt4all-ray sets it to {json.dumps(self.ours)} (its optimizer is torch's AdamW)"
        values = ", ".join(f"{name} = {getattr(cfg, name)!r}" for name in self.settings)
        if self.ours is UNSET:  # optimizer, scheduler: sections of DeepSpeed's own that ours replace
            return f"{theirs}, but the space decides it ({values}): remove the section"
        return f"{theirs}, but the space gives {json.dumps(self.ours)} ({values})"


def read_user_config(path: Path) -> dict[str, Any]:
    """A DeepSpeed JSON file as a dict; ValueError naming the file (and line) otherwise."""
    try:
        loaded = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read the DeepSpeed config: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a JSON object of DeepSpeed settings, got {type(loaded).__name__}")
    return loaded


# What DeepSpeed takes where the generated config leaves a decided key out.
DEEPSPEED_DEFAULTS = {
    "zero_optimization.offload_optimizer.device": "none",
    "zero_optimization.offload_param.device": "none",
}
SAME_AS = {"bfloat16.enabled": "bf16.enabled"}


def decided_keys(user: Mapping[str, Any], generated: Mapping[str, Any]) -> list[UserKey]:
    """The keys of `user` that the space decides, each with the value the generated config gives it."""
    found = []
    for path in DECIDED_BY:
        theirs = _lookup(user, path)
        if theirs is not UNSET:
            ours = _lookup(generated, SAME_AS.get(path, path))
            found.append(UserKey(path, theirs, DEEPSPEED_DEFAULTS.get(path, UNSET) if ours is UNSET else ours))
    return found


def _lookup(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return UNSET
        node = node[part]
    return node


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, section by section (a value that is not a section replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
