"""Trial config -> an explicit DeepSpeed config (no "auto" values, every number decided here),
with the user's own DeepSpeed file (fixed.deepspeed) merged over it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig, read_deepspeed_file


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
    "fp16.enabled": ("precision",),
    # Ours is torch's AdamW with our LambdaLR, passed to deepspeed.initialize: these sections
    # would fight them (and the hyperparameter check reads the optimizer's groups).
    "optimizer": ("learning_rate", "weight_decay"),
    "scheduler": ("lr_schedule", "warmup_steps", "warmup_ratio"),
    "zero_allow_untested_optimizer": (),
    "zero_force_ds_cpu_optimizer": (),
}
# DeepSpeed's other names for decided keys: it would read them, so they could undo the space.
OTHER_NAMES = {
    "bfloat16": "bf16 (DeepSpeed reads bf16, which the generated config always has, and ignores bfloat16)",
    "zero_optimization.cpu_offload": "zero_optimization.offload_optimizer, decided by fixed.offload_optimizer",
    "zero_optimization.cpu_offload_param": "zero_optimization.offload_param, decided by fixed.offload_params",
    "zero_optimization.cpu_offload_use_pin_memory": "the offload sections' pin_memory",
}
# What DeepSpeed takes where the generated config leaves a decided key out.
DEEPSPEED_DEFAULTS = {
    "zero_optimization.offload_optimizer.device": "none",
    "zero_optimization.offload_param.device": "none",
}
AUTO = "auto"
"""Hugging Face Trainer's placeholder: on a decided key it means the space's value; DeepSpeed
itself resolves no "auto", so elsewhere it is refused."""
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


def deepspeed_config(cfg: TrialConfig, world_size: int, user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The generated config with the user's DeepSpeed config (`user`, else fixed.deepspeed's file)
    merged over it. A key the space decides may only be the value the space gives it, or "auto"
    (DeepSpeedConflict otherwise)."""
    generated = generated_config(cfg, world_size)
    if user is None:
        if not cfg.deepspeed:
            return generated
        user = read_deepspeed_file(Path(cfg.deepspeed))
    problem = user_config_problem(user, generated, cfg)
    if problem:
        raise DeepSpeedConflict(cfg.deepspeed, problem)
    return merged(generated, user)


class DeepSpeedConflict(ValueError):
    """The user's DeepSpeed file sets a key the space decides to another value, or one that would
    do nothing."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


class UserKey:
    """A key of the user's file that the space decides: its value there and in the generated config."""

    def __init__(self, path: str, theirs: Any, ours: Any) -> None:
        self.path, self.theirs, self.ours = path, theirs, ours

    @property
    def settings(self) -> tuple[str, ...]:
        return DECIDED_BY[self.path]

    @property
    def differs(self) -> bool:
        # 1 is not true and 16.0 is not 16 in what is recorded, though DeepSpeed reads them alike.
        return self.theirs != AUTO and (self.theirs != self.ours or type(self.theirs) is not type(self.ours))

    def describe(self, cfg: TrialConfig) -> str:
        theirs = f"sets {self.path} = {json.dumps(self.theirs)}"
        if not self.settings:
            return f"{theirs}; gpt4all-ray sets it to {json.dumps(self.ours)} (its optimizer is torch's AdamW)"
        values = ", ".join(f"{name} = {getattr(cfg, name)!r}" for name in self.settings)
        if self.ours is UNSET:  # optimizer, scheduler: sections of DeepSpeed's own that ours replace
            return f"{theirs}, but the space decides it ({values}): remove the section"
        return f"{theirs}, but the space gives {json.dumps(self.ours)} ({values})"


def decided_keys(user: Mapping[str, Any], generated: Mapping[str, Any]) -> list[UserKey]:
    """The keys of `user` that the space decides, each with the value the generated config gives it."""
    found = []
    for path in DECIDED_BY:
        theirs = _lookup(user, path)
        if theirs is not UNSET:
            ours = _lookup(generated, path)
            found.append(UserKey(path, theirs, DEEPSPEED_DEFAULTS.get(path, UNSET) if ours is UNSET else ours))
    return found


def user_config_problem(user: Mapping[str, Any], generated: Mapping[str, Any], cfg: TrialConfig) -> str | None:
    """Why the user's config cannot be merged over the generated one, or None."""
    for path in _section_paths():
        value = _lookup(user, path)
        if value is not UNSET and not isinstance(value, Mapping):
            return f"sets {path} = {json.dumps(value)}; expected a section (a JSON object): keys in it are decided here"
    for path, instead in OTHER_NAMES.items():
        if _lookup(user, path) is not UNSET:
            return f"sets {path}, DeepSpeed's other name for {instead}: write it under that name"
    for key in decided_keys(user, generated):
        if key.differs:
            return key.describe(cfg)
    for path, value in _leaves(user):
        if value == AUTO and path not in DECIDED_BY:
            return f'sets {path} = "auto": DeepSpeed resolves no "auto" (Hugging Face Trainer does); give a value'
    return idle_key(user, cfg)


def idle_key(user: Mapping[str, Any], cfg: TrialConfig) -> str | None:
    """A setting of a feature the space turns off would do nothing: refused, not ignored."""
    off = {
        "fp16": f"precision is {cfg.precision}" if cfg.precision != "fp16" else "",
        "bf16": f"precision is {cfg.precision}" if cfg.precision != "bf16" else "",
        "zero_optimization.offload_optimizer": "" if cfg.offload_optimizer else "fixed.offload_optimizer is false",
        "zero_optimization.offload_param": "" if cfg.offload_params else "fixed.offload_params is false",
    }
    for section, why in off.items():
        given = _lookup(user, section)
        keys = [k for k in given if k not in ("enabled", "device")] if why and isinstance(given, Mapping) else []
        if keys:
            return f"sets {section}.{keys[0]}, which does nothing: {why}"
    zero = _lookup(user, "zero_optimization")
    stage3 = [k for k in zero if k.startswith("stage3_")] if isinstance(zero, Mapping) else []
    if stage3 and cfg.zero_stage != 3:
        return f"sets zero_optimization.{stage3[0]}, which does nothing: zero_stage is {cfg.zero_stage}"
    return None


def _section_paths() -> list[str]:
    """Every section on the way to a decided key (zero_optimization, its offload sections, ...)."""
    return sorted({path.rsplit(".", depth)[0] for path in DECIDED_BY for depth in range(1, path.count(".") + 1)})


def _leaves(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return UNSET
        node = node[part]
    return node


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, section by section (a value that is not a section replaces;
    "auto" keeps the base's value)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        elif value != AUTO:
            out[key] = value
    return out
