"""Trial config -> an explicit DeepSpeed config (no "auto" values, every number decided here)."""

from __future__ import annotations

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


def deepspeed_config(cfg: TrialConfig, world_size: int) -> dict[str, Any]:
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
