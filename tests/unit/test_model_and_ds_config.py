from __future__ import annotations

import dataclasses
import os

import pytest

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.train.ds_config import deepspeed_config
from gpt4all_ray.train.model import build_model, padded_vocab


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    return build_tokenizer(load_split(TrialConfig(data_rows=300)))


def test_tiny_gptj_matches_gpt_j_6b_names(tokenizer) -> None:  # noqa: ANN001
    model = build_model(TrialConfig(model="tiny-gptj"), tokenizer)
    assert type(model).__name__ == "GPTJForCausalLM"
    names = {n for n, _ in model.named_modules()}
    assert "transformer.h.0.attn.q_proj" in names and "transformer.h.0.attn.v_proj" in names
    assert model.config.n_positions >= 2 * TrialConfig().max_length
    assert model.get_input_embeddings().num_embeddings % 64 == 0
    assert model.config.pad_token_id != model.config.eos_token_id


def test_tiny_llama_and_seeded_init(tokenizer) -> None:  # noqa: ANN001
    a = build_model(TrialConfig(model="tiny-llama"), tokenizer)
    b = build_model(TrialConfig(model="tiny-llama"), tokenizer)
    assert type(a).__name__ == "LlamaForCausalLM"
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("model_name", ["tiny-gptj", "tiny-llama"])
def test_lora_trains_only_adapters_on_q_and_v(tokenizer, model_name: str) -> None:  # noqa: ANN001
    model = build_model(TrialConfig(model=model_name, method="lora"), tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {"q_proj", "v_proj"}


def test_padded_vocab() -> None:
    assert padded_vocab(1024) == 1024 and padded_vocab(1025) == 1088 and padded_vocab(1) == 64


def test_deepspeed_config_is_explicit() -> None:
    cfg = TrialConfig(per_device_batch=4, global_batch=32, zero_stage=3, precision="bf16", grad_clip=1.0)
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 32 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert "auto" not in repr(ds)


def test_deepspeed_config_refuses_a_batch_the_workers_cannot_make() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        deepspeed_config(dataclasses.replace(TrialConfig(), global_batch=20, per_device_batch=8), world_size=2)


def test_pad_token_added_and_embeddings_grown_to_a_multiple_of_64() -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from gpt4all_ray.data.tokenizer import ensure_pad_token
    from gpt4all_ray.train.model import fit_embeddings, tiny_config

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(
        ["hello world"] * 5,
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")  # no pad, like LLaMA's
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("tiny-llama", len(tokenizer)))
    old = model.get_input_embeddings().weight.detach().clone()
    assert ensure_pad_token(tokenizer) is True
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.pad_token_id == old.shape[0]
    fit_embeddings(model, tokenizer)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] % 64 == 0 and weight.shape[0] >= len(tokenizer)
    assert torch.equal(weight[: old.shape[0]], old)  # existing rows untouched
    new = weight[tokenizer.pad_token_id]
    assert torch.isfinite(new).all()
    assert (new - old.mean(0)).norm() < old.norm(dim=1).mean()  # near the mean, not a random outlier
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert ensure_pad_token(tokenizer) is False  # idempotent


def test_fp16_loss_scaling_and_offload_are_spelled_out() -> None:
    cfg = TrialConfig(zero_stage=3, precision="fp16", offload_optimizer=True, offload_params=True)
    ds = deepspeed_config(cfg, world_size=1)
    assert ds["fp16"]["enabled"] is True and ds["fp16"]["loss_scale"] == 0  # dynamic
    assert ds["fp16"]["initial_scale_power"] == 16 and ds["bf16"]["enabled"] is False
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_force_ds_cpu_optimizer"] is False  # torch AdamW steps on the CPU: no JIT build
    plain = deepspeed_config(TrialConfig(), world_size=1)
    assert plain["fp16"] == {"enabled": False} and "offload_optimizer" not in plain["zero_optimization"]


def test_lora_targets_come_from_the_architecture_table_or_the_config(tokenizer) -> None:  # noqa: ANN001
    from gpt4all_ray.train.model import lora_targets

    assert lora_targets(TrialConfig(method="lora"), "gpt_neox") == ["query_key_value"]
    assert lora_targets(TrialConfig(method="lora", lora_targets="q_proj, k_proj,v_proj"), "gptj") == [
        "q_proj",
        "k_proj",
        "v_proj",
    ]
    with pytest.raises(ValueError, match="lora_targets: no default LoRA target modules for architecture 'mamba'"):
        lora_targets(TrialConfig(method="lora"), "mamba")
    model = build_model(TrialConfig(model="tiny-llama", method="lora", lora_targets="gate_proj"), tokenizer)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"gate_proj"}


def test_a_hugging_face_model_loads_by_local_path_with_its_own_tokenizer(tmp_path, tokenizer) -> None:  # noqa: ANN001
    from gpt4all_ray.data.tokenizer import load_tokenizer

    saved = build_model(TrialConfig(model="tiny-llama"), tokenizer)
    saved.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = TrialConfig(model=str(tmp_path), method="lora", gradient_checkpointing=True)
    loaded_tokenizer = load_tokenizer(cfg, data=None)  # its own: the data is not read
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    model = build_model(cfg, loaded_tokenizer)
    base = model.get_base_model()
    assert type(base).__name__ == "LlamaForCausalLM" and base.is_gradient_checkpointing
    weights = {n.replace(".base_layer", ""): p for n, p in base.named_parameters() if "lora_" not in n}
    assert weights.keys() == dict(saved.named_parameters()).keys()
    assert all((weights[n] == p).all() for n, p in saved.named_parameters())


def test_gelu_new_loads_as_the_same_function_in_one_fused_kernel(tmp_path, tokenizer) -> None:  # noqa: ANN001
    import torch
    from transformers import GPTJForCausalLM

    from gpt4all_ray.train.model import base_model

    reference = build_model(TrialConfig(model="tiny-gptj"), tokenizer)
    reference.config.activation_function = "gelu_new"  # as GPT-J-6B's own config.json says
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    as_written = GPTJForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    loaded, _ = base_model(TrialConfig(model=str(tmp_path)), tokenizer)
    assert type(as_written.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    assert type(loaded.transformer.h[0].mlp.act).__name__ == "GELUTanh"
    assert loaded.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, as_written(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_a_hub_model_is_read_from_the_configured_hugging_face_cache(tmp_path, tokenizer) -> None:  # noqa: ANN001
    """fixed.hf_cache reaches every from_pretrained: a Hub name resolves, offline, from a cache
    folder laid out as huggingface_hub writes it (and from nowhere else)."""
    import subprocess
    import sys

    cache, revision = tmp_path / "hub", "0" * 40
    snapshot = cache / "models--gpt4all-test--tiny" / "snapshots" / revision
    build_model(TrialConfig(model="tiny-llama"), tokenizer).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (cache / "models--gpt4all-test--tiny" / "refs").mkdir()
    (cache / "models--gpt4all-test--tiny" / "refs" / "main").write_text(revision)
    code = f"""
from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data.tokenizer import load_tokenizer
from gpt4all_ray.train.model import base_model
for hf_cache in ({str(cache)!r}, ""):
    cfg = TrialConfig(model="gpt4all-test/tiny", hf_cache=hf_cache, precision="bf16")
    try:
        model, _ = base_model(cfg, load_tokenizer(cfg, None))
        print(hf_cache or "default", type(model).__name__, next(model.parameters()).dtype)
    except OSError:
        print(hf_cache or "default", "not found")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "elsewhere")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"{cache} LlamaForCausalLM torch.bfloat16", "default not found"], out
