"""Byte-level BPE tokenizer trained in-process on the default data (no hub download)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gpt4all_ray.config import EMBEDDED_MODELS, TrialConfig

EOS = "<|endoftext|>"
PAD = "<|pad|>"  # distinct from EOS: with pad == eos GPT4All's first model never learned to stop


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Any:
    """A `transformers` fast tokenizer; `save_pretrained` writes tokenizer.json, and
    `AutoTokenizer.from_pretrained` reloads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def is_builtin(cfg: TrialConfig) -> bool:
    """A built-in tiny model: its tokenizer is trained on the training rows."""
    return cfg.model in EMBEDDED_MODELS


def ensure_pad_token(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token distinct from EOS (LLaMA's has none; setting pad = eos is
    the bug that kept GPT4All's first model from stopping). True when one was added."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD})
    return True


def load_tokenizer(cfg: TrialConfig, data: Any) -> Any:
    """The model's own tokenizer, with a pad token distinct from EOS; the built-in models train
    theirs on the training rows."""
    if is_builtin(cfg):
        from gpt4all_ray.data import build_tokenizer

        tokenizer = build_tokenizer(data)
    else:
        from transformers import AutoTokenizer

        hub = {"trust_remote_code": cfg.trust_remote_code, "cache_dir": cfg.hf_cache or None}
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, **hub)
    ensure_pad_token(tokenizer)
    return tokenizer
