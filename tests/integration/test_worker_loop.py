"""The worker loop without Ray (the torchrun seam): real DeepSpeed engines on gloo.

Every ZeRO stage x {LoRA, full} x {fp32, bf16} trains one epoch on the tiny model, saves a Hugging
Face checkpoint (full model or PEFT adapter), and the checkpoint reloaded with `from_pretrained`
(`PeftModel.from_pretrained`) gives the validation loss the loop reported. All cases run in one
process (tests/integration/worker_runs.py), so imports are paid once. ZeRO-1 and ZeRO-3 run again
with two ranks, where state is partitioned for real: ZeRO-3's export gathers the weights from both
ranks, and its generation probes run in lock-step (each forward gathers from every rank).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_worker_cases
from tests.unit.chat import CHAT_TEMPLATE, conversations_file, with_chat_template

pytestmark = pytest.mark.integration

BASE = {
    "data_rows": 400,
    "val_fraction": 0.1,
    "epochs": 1,
    "per_device_batch": 8,
    "global_batch": 16,
    "learning_rate": 3e-3,
    "warmup_steps": 2,
    "weight_decay": 0.01,
}
MATRIX = {
    f"{method}-zero{stage}-{precision}": {"method": method, "zero_stage": stage, "precision": precision}
    for method in ("full", "lora")
    for stage in (0, 1, 2, 3)
    for precision in ("fp32", "bf16")
}
MORE = {
    "llama-lora-zero3-gradckpt-eval-steps": {
        "model": "tiny-llama",
        "method": "lora",
        "zero_stage": 3,
        "gradient_checkpointing": True,
        "eval_every_steps": 8,
        "precision": "bf16",
    },
    "pack-llama": {"collate": "pack", "model": "tiny-llama"},
    "offload-optimizer-zero2": {"offload_optimizer": True},
    "planted_weight_decay": {},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    from gpt4all_ray.data.synthetic import generate_rows

    root = tmp_path_factory.mktemp("worker_runs")
    rows = [{"instruction": r["prompt"], "output": r["response"], "task": r["source"]} for r in generate_rows(400, 3)]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    file_case = {
        "data": str(data),
        "prompt_column": "instruction",
        "response_column": "output",
        "source_column": "task",
        "exclude_sources": "creative",
    }
    cases = {name: BASE | settings for name, settings in (MATRIX | MORE).items()}
    cases["data-file"] = BASE | file_case
    hf_folder = save_hf_model_without_pad(root / "hf-llama")
    cases["hf-path-lora-new-pad"] = BASE | {"model": str(hf_folder), "method": "lora"}
    cases["hf-path-full-zero3"] = BASE | {"model": str(hf_folder), "zero_stage": 3}
    chat_folder = save_hf_model_without_pad(root / "hf-llama-chat")
    with_chat_template(AutoTokenizer.from_pretrained(chat_folder)).save_pretrained(chat_folder)
    conversations = conversations_file(root / "chats.jsonl", generate_rows(400, 3))
    cases["chat-template-conversations"] = BASE | EXTRA_CASES["chat-template-conversations"]
    cases["chat-template-conversations"] |= {"model": str(chat_folder), "data": str(conversations)}
    own = root / "own_deepspeed.json"
    own.write_text(
        json.dumps(OWN_DEEPSPEED | {"flops_profiler": FLOPS_PROFILER | {"output_file": str(root / "flops.txt")}})
    )
    cases["own-deepspeed-accumulate"] = BASE | EXTRA_CASES["own-deepspeed-accumulate"] | {"deepspeed": str(own)}
    run_worker_cases(root, cases)
    return root


OWN_DEEPSPEED = {"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 1_000_000}}
# DeepSpeed's own profiler writes a file at its step: proof that the user's file reached the engine.
FLOPS_PROFILER = {"enabled": True, "profile_step": 2, "module_depth": 1, "top_modules": 1, "detailed": False}
EXTRA_CASES = {
    "chat-template-conversations": {"method": "lora", "prompt_format": "chat_template", "max_length": 192},
    # per_device_batch 4 of global 16 on one rank: 4 micro-batches accumulated a step.
    "own-deepspeed-accumulate": {"per_device_batch": 4, "warmup_steps": 0, "warmup_ratio": 0.25},
}


def save_hf_model_without_pad(folder: Path) -> Path:
    """A Hugging Face model folder as users bring one: its own tokenizer with EOS but no pad
    token (like LLaMA's), and embeddings exactly that tokenizer's size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from gpt4all_ray.config import TrialConfig
    from gpt4all_ray.data import load_split
    from gpt4all_ray.train.model import tiny_config

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    rows = load_split(TrialConfig(**{k: v for k, v in BASE.items() if k in ("data_rows", "val_fraction")})).train
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator((r["prompt"] + " " + r["response"] for r in rows), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    config = tiny_config("tiny-llama", len(tokenizer))
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    config.pad_token_id = None
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reports(folder: Path) -> list[dict]:
    error = folder / "error.txt"
    assert not error.exists(), error.read_text()[-3000:]
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


TWO_RANKS = {
    f"{method}-zero{stage}-2ranks": {"method": method, "zero_stage": stage, "probe_prompts": 7}  # 4 + 3: unequal
    for method in ("full", "lora")
    for stage in (1, 3)
}


@pytest.fixture(scope="module")
def runs_two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker_runs_2")
    run_worker_cases(root, {name: BASE | settings for name, settings in TWO_RANKS.items()}, world=2)
    return root


@pytest.mark.parametrize("case", list(TWO_RANKS))
def test_two_ranks_partitioned_train_export_gathered_and_reload_to_the_reported_loss(
    runs_two_ranks: Path, case: str
) -> None:
    from gpt4all_ray.inspection.evaluate import validation_loss

    metrics = reports(runs_two_ranks / case)
    assert metrics[-1]["stop_reason"] == "completed" and metrics[-1]["epoch_end"]
    folder = runs_two_ranks / case / "model"
    ds_config = json.loads((folder / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["stage"] == TWO_RANKS[case]["zero_stage"]
    # Both ranks' optimizer partitions are in the resume checkpoint.
    engine = runs_two_ranks / case / "checkpoints" / f"step-{metrics[-1]['step']}" / "resume" / "engine"
    shards = sorted(p.name for p in engine.rglob("*optim_states.pt"))
    assert len(shards) == 2 and any("rank_1" in name for name in shards), shards
    best = min(metrics, key=lambda m: m["val_loss"])
    # The export (ZeRO-3: gathered from both ranks' partitions) reloads on one process to the loss
    # the two ranks measured together.
    assert validation_loss(folder) == pytest.approx(best["val_loss"], rel=1e-4)
    # Probes ran over both ranks' shares of 7 prompts (4 and 3), in lock-step at ZeRO-3.
    assert 0 <= metrics[-1]["probe_stop_rate"] <= 1 and metrics[-1]["probe_mean_new_tokens"] >= 0


HF_CASES = {"hf-path-lora-new-pad": {"method": "lora"}, "hf-path-full-zero3": {"zero_stage": 3}}


@pytest.mark.parametrize(
    "case", [*MATRIX, "llama-lora-zero3-gradckpt-eval-steps", "offload-optimizer-zero2", *HF_CASES, *EXTRA_CASES]
)
def test_trains_saves_and_reloads_to_the_reported_loss(runs: Path, case: str) -> None:
    from gpt4all_ray.inspection.evaluate import load_checkpoint, validation_loss

    settings = BASE | MATRIX.get(case, MORE.get(case, HF_CASES.get(case, EXTRA_CASES.get(case, {}))))
    metrics = reports(runs / case)
    assert metrics[-1]["stop_reason"] == "completed" and metrics[-1]["epoch_end"]
    folder = runs / case / "model"
    adapter = (folder / "adapter_config.json").is_file()
    assert adapter == (settings.get("method") == "lora")
    model, tokenizer, cfg = load_checkpoint(folder)
    assert cfg.method == settings.get("method", "full") and tokenizer.pad_token_id != tokenizer.eos_token_id
    if adapter:
        from peft import PeftModel

        assert isinstance(model, PeftModel)
    ds_config = json.loads((folder / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["stage"] == settings.get("zero_stage", 2)
    assert ds_config["bf16"]["enabled"] == (settings.get("precision") == "bf16")
    best = min(metrics, key=lambda m: m["val_loss"])
    if not adapter:  # LoRA on a random base barely moves in one epoch: no claim made for it
        assert best["val_loss"] < math.log(len(tokenizer))  # it learned: better than a uniform guess
    assert metrics[-1]["best_val_loss"] == best["val_loss"]
    assert validation_loss(folder) == pytest.approx(best["val_loss"], rel=1e-4)
    # Generation probes ran on the best checkpoint in every setting (ZeRO-3: synced generation).
    assert 0 <= metrics[-1]["probe_stop_rate"] <= 1 and metrics[-1]["probe_mean_new_tokens"] >= 0


def test_every_report_carries_the_metrics_and_a_resumable_checkpoint(runs: Path) -> None:
    metrics = reports(runs / "llama-lora-zero3-gradckpt-eval-steps")
    steps = [m["step"] for m in metrics]
    assert steps[:2] == [8, 16] and metrics[0]["epoch_end"] is False and metrics[-1]["epoch_end"] is True
    assert metrics[0]["lr"] > metrics[-1]["lr"] == 0.0  # linear decay reaches 0 at the last step
    for m in metrics:
        assert m["tokens_per_s"] > 0 and m["lr"] >= 0 and math.isfinite(m["val_ppl"])
        assert "mfu" not in m  # no known peak on a CPU, and none made up
        resume = runs / "llama-lora-zero3-gradckpt-eval-steps" / "checkpoints" / f"step-{m['step']}" / "resume"
        assert (resume / "loop_state.json").is_file() and (resume / "engine").is_dir()
    assert any("grad_norm" in m for m in reports(runs / "full-zero2-fp32"))
    # Time inside optimizer steps grows report by report; the first step's time is one instant.
    train_s = [m["train_s"] for m in metrics]
    assert all(0 < a < b for a, b in zip(train_s, train_s[1:], strict=False))
    assert len({m["first_step_at"] for m in metrics}) == 1 and metrics[0]["first_step_at"] < time.time()
    # Time outside steps, by phase: setup once, before the first step; evaluation at every report;
    # checkpoint and report up to the report before (this one's are not over when it is sent).
    first, second = metrics[0], metrics[1]
    setup = [first[f"setup_{part}_s"] for part in ("libraries", "data", "model", "engine")]
    assert all(s > 0 for s in setup) and sum(setup) < first["first_step_at"] - first["worker_started_at"]
    assert all(m[f"setup_{part}_s"] == first[f"setup_{part}_s"] for m in metrics for part in ("data", "engine"))
    evaluate_s = [m["evaluate_s"] for m in metrics]
    assert all(0 < a < b for a, b in zip(evaluate_s, evaluate_s[1:], strict=False))
    assert first["checkpoint_s"] == first["report_s"] == first["resume_s"] == 0
    assert second["checkpoint_s"] > 0 and second["report_s"] > 0


def test_packed_training_loss_matches_unpacked_evaluation(runs: Path) -> None:
    from gpt4all_ray.inspection.evaluate import validation_loss

    metrics = reports(runs / "pack-llama")
    # The loop evaluated packed; evaluate.py pads each row alone: the same loss.
    assert validation_loss(runs / "pack-llama" / "model") == pytest.approx(metrics[-1]["val_loss"], rel=1e-4)


def test_trains_on_a_data_file_with_mapped_columns(runs: Path) -> None:
    metrics = reports(runs / "data-file")
    assert metrics[-1]["stop_reason"] == "completed" and metrics[-1]["val_loss"] > 0
    saved = json.loads((runs / "data-file" / "model" / "trial_config.json").read_text())
    assert saved["data"].endswith("rows.jsonl") and saved["exclude_sources"] == "creative"


def test_checkpoint_tokenizer_is_the_training_tokenizer(runs: Path) -> None:
    from transformers import AutoTokenizer

    from gpt4all_ray.config import TrialConfig
    from gpt4all_ray.data import build_tokenizer, load_split

    saved = AutoTokenizer.from_pretrained(runs / "full-zero2-fp32" / "model")
    trained = build_tokenizer(load_split(TrialConfig(data_rows=400, val_fraction=0.1)))
    assert saved.backend_tokenizer.to_str() == trained.backend_tokenizer.to_str()
    assert (saved.pad_token_id, saved.eos_token_id) == (trained.pad_token_id, trained.eos_token_id)


def test_planted_weight_decay_mismatch_fails_the_trial_before_training(runs: Path) -> None:
    error = (runs / "planted_weight_decay" / "error.txt").read_text()
    assert "HyperparameterMismatch" in error and "weight decay 0.0 in the optimizer, 0.01 wanted" in error
    assert not (runs / "planted_weight_decay" / "metrics.jsonl").exists()


def test_a_model_folder_without_pad_token_gets_one_and_its_lora_checkpoint_carries_the_grown_embeddings(
    runs: Path,
) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(runs / "hf-llama")
    saved = AutoTokenizer.from_pretrained(runs / "hf-path-lora-new-pad" / "model")
    assert source.pad_token is None and saved.pad_token_id == len(source)  # added, distinct from EOS
    with safe_open(runs / "hf-path-lora-new-pad" / "model" / "adapter_model.safetensors", "pt") as f:
        embeddings = [k for k in f.keys() if "embed_tokens" in k]  # noqa: SIM118 (safe_open has no __iter__)
        assert embeddings and f.get_tensor(embeddings[0]).shape[0] % 64 == 0


def test_own_deepspeed_file_reaches_the_engine_and_is_saved_merged(runs: Path) -> None:
    folder = runs / "own-deepspeed-accumulate"
    assert reports(folder)[-1]["stop_reason"] == "completed"
    saved = json.loads((folder / "model" / "ds_config.json").read_text())
    assert saved["zero_optimization"] == {"stage": 2} | OWN_DEEPSPEED["zero_optimization"]
    assert saved["flops_profiler"]["profile_step"] == FLOPS_PROFILER["profile_step"]
    assert (saved["train_micro_batch_size_per_gpu"], saved["gradient_accumulation_steps"]) == (4, 4)
    profile = (runs / "flops.txt").read_text()  # written by DeepSpeed's engine, from the user's section
    assert "DeepSpeed Flops Profiler" in profile and re.search(r"batch size per GPU:\s+4\b", profile)


def test_chat_template_conversations_train_and_the_checkpoint_keeps_the_template(runs: Path) -> None:
    from transformers import AutoTokenizer

    metrics = reports(runs / "chat-template-conversations")
    assert metrics[-1]["stop_reason"] == "completed"
    saved = AutoTokenizer.from_pretrained(runs / "chat-template-conversations" / "model")
    assert saved.chat_template == CHAT_TEMPLATE  # best/ answers in the format it was trained in
    config = json.loads((runs / "chat-template-conversations" / "model" / "trial_config.json").read_text())
    assert config["prompt_format"] == "chat_template" and config["data"].endswith("chats.jsonl")
