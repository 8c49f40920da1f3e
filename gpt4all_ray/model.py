"""Base model and LoRA. The built-in tiny models are built from a config, seeded, no download."""

from __future__ import annotations

from typing import Any

from gpt4all_ray.config import TrialConfig

# One code path for both families: only this table differs per architecture.
LORA_TARGETS = {"gptj": ["q_proj", "v_proj"], "llama": ["q_proj", "v_proj"]}
TINY_POSITIONS = 1024  # prompt (max_length) plus room for generation


def tiny_config(name: str, vocab_size: int) -> Any:
    from transformers import GPTJConfig, LlamaConfig

    if name == "tiny-gptj":
        # Same class and module names as EleutherAI/gpt-j-6b, ~4 orders of magnitude smaller.
        return GPTJConfig(
            vocab_size=vocab_size,
            n_positions=TINY_POSITIONS,
            n_embd=64,
            n_layer=2,
            n_head=4,
            rotary_dim=16,
            n_inner=256,
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


def padded_vocab(n: int, multiple: int = 64) -> int:
    # Embedding rows as a multiple of 64 run faster on tensor cores (noted in GPT4All's log).
    return -(-n // multiple) * multiple


def ensure_pad_token(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token distinct from EOS (LLaMA's has none; setting pad = eos is
    the bug that kept GPT4All's first model from stopping). True when one was added."""
    from gpt4all_ray.data.tokenizer import PAD

    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD})
    return True


def fit_embeddings(model: Any, tokenizer: Any, multiple: int = 64) -> None:
    """Grow the embeddings to cover the tokenizer, rounded up to `multiple`; new rows are drawn
    around the mean of the existing ones (transformers' mean_resizing), not at random scale."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple, mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id


def build_model(cfg: TrialConfig, tokenizer: Any) -> Any:
    """The trial's trainable model: the tiny base (seeded init), wrapped in LoRA when asked."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    config = tiny_config(cfg.model, padded_vocab(len(tokenizer)))
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    fit_embeddings(model, tokenizer)  # a no-op for the tiny models, sized from the tokenizer above
    if cfg.method == "lora":
        model = wrap_lora(model, cfg)
    return model


def wrap_lora(model: Any, cfg: TrialConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=LORA_TARGETS[model.config.model_type],
    )
    return get_peft_model(model, lora)
