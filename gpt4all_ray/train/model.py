"""Base model, tokenizer and LoRA. The built-in tiny models are built from a config, seeded, no
download; any other name is a Hugging Face causal LM, loaded from a local folder or the Hub."""

from __future__ import annotations

from typing import Any

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data.tokenizer import is_builtin

# One code path for every family: only this table differs per architecture (config.model_type).
# GPT4All adapted the attention query and value projections (Alpaca-LoRA's choice) on LLaMA and GPT-J.
LORA_TARGETS = {
    "gptj": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "gpt2": ["c_attn"],
}
TINY_POSITIONS = 1024  # prompt (max_length) plus room for generation


def tiny_config(name: str, vocab_size: int) -> Any:
    from transformers import GPTJConfig, LlamaConfig

    if name in ("tiny-gptj", "tiny-gptj-wide"):
        # Same class and module names as EleutherAI/gpt-j-6b, ~4 orders of magnitude smaller. The
        # wide one (2x wider, 2x deeper) memorises a few hundred rows within a few epochs, so its
        # validation loss rises after an early best as GPT4All's full fine-tunes did.
        wide = name == "tiny-gptj-wide"
        return GPTJConfig(
            vocab_size=vocab_size,
            n_positions=TINY_POSITIONS,
            n_embd=128 if wide else 64,
            n_layer=4 if wide else 2,
            n_head=4,
            rotary_dim=16,
            n_inner=512 if wide else 256,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            max_position_embeddings=TINY_POSITIONS,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
        )
    raise ValueError(f"unknown built-in model {name!r}")


EMBEDDING_MULTIPLE = 64
"""Embedding rows as a multiple of 64 run faster on tensor cores (noted in GPT4All's log)."""


def padded_vocab(n: int, multiple: int = EMBEDDING_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def fit_embeddings(model: Any, tokenizer: Any, multiple: int = EMBEDDING_MULTIPLE) -> bool:
    """Grow the embeddings to cover the tokenizer, rounded up to `multiple`; new rows are drawn
    around the mean of the existing ones (transformers' mean_resizing), not at random scale.
    True when they grew."""
    grew = model.get_input_embeddings().num_embeddings < len(tokenizer)
    if grew:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple, mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return grew


def base_model(cfg: TrialConfig, tokenizer: Any) -> tuple[Any, bool]:
    """The seeded base model with embeddings fitted to the tokenizer, and whether they grew (a
    LoRA checkpoint must then carry them)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    if is_builtin(cfg):
        config = tiny_config(cfg.model, padded_vocab(len(tokenizer)))
        config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForCausalLM.from_config(fused_gelu(config))
    else:
        hub = {"trust_remote_code": cfg.trust_remote_code, "cache_dir": cfg.hf_cache or None}
        config = fused_gelu(AutoConfig.from_pretrained(cfg.model, **hub))
        # In the training dtype: DeepSpeed casts the module to it anyway and makes its fp32 master
        # copy from the cast weights, so an fp32 load only adds a transient full-size copy on the
        # host (benchmarks/setup_scale.py model). Under ZeRO-3 the weights are partitioned as they
        # load while an HfDeepSpeedConfig is alive (loop.py keeps one).
        dtype = getattr(torch, TRAINING_DTYPES[cfg.precision])
        model = AutoModelForCausalLM.from_pretrained(cfg.model, config=config, dtype=dtype, **hub)
    return model, fit_embeddings(model, tokenizer)


TRAINING_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""The torch dtype a Hugging Face model is loaded in, by precision."""


def fused_gelu(config: Any) -> Any:
    """GPT-J's and GPT-2's "gelu_new" is the tanh approximation of GELU written as eight
    elementwise ops; "gelu_pytorch_tanh" is the same function in one fused kernel (+6% MFU on an
    H100, results/benchmarks.md). The exported config then names the fused one."""
    for key in ("activation_function", "hidden_act"):
        if getattr(config, key, None) == "gelu_new":
            setattr(config, key, "gelu_pytorch_tanh")
    return config


def trainable(model: Any, cfg: TrialConfig) -> Any:
    """Gradient checkpointing and the LoRA wrapper, as the trial asks."""
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return wrap_lora(model, cfg) if cfg.method == "lora" else model


def build_model(cfg: TrialConfig, tokenizer: Any) -> Any:
    return trainable(base_model(cfg, tokenizer)[0], cfg)


def lora_targets(cfg: TrialConfig, model_type: str) -> list[str]:
    if cfg.lora_targets:
        return [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"lora_targets: no default LoRA target modules for architecture {model_type!r} "
            f"(known: {', '.join(sorted(LORA_TARGETS))}); set fixed.lora_targets, e.g. q_proj,v_proj"
        )
    return LORA_TARGETS[model_type]


def wrap_lora(model: Any, cfg: TrialConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(cfg, model.config.model_type),
    )
    return get_peft_model(model, lora)
