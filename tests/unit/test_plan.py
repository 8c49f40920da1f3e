"""The dry-run planner: resources, concurrency and a GPU-hour estimate whose arithmetic is
checked against an independent calculation, without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt4all_ray.config import load_spec
from gpt4all_ray.search.plan import Assumptions, make_plan
from tests.unit.cli import run_tune

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def test_gpt4allj_full_plan_by_hand() -> None:
    spec = load_spec(SPACES / "gpt4allj_full_gptj6b.yaml")
    plan = make_plan(spec, Assumptions(cluster_gpus=16, gpu="A100", mfu=0.4, rows=100_000, tokens_per_row=500))
    assert plan.gpus_per_trial == 8 and plan.concurrency == 2
    # Independently: GPT-J-6B, full fine-tuning, 1024 context, bf16 A100 at 40% of 312 TFLOP/s.
    n, layers, width = 6_053_381_344, 28, 4096
    flops_per_token = 6 * n + 12 * layers * width * 1024
    tokens = 100_000 * 0.95 * 500
    gpu_hours_per_epoch = tokens * flops_per_token / (0.4 * 312e12) / 3600
    assert plan.gpu_seconds_per_epoch / 3600 == pytest.approx(gpu_hours_per_epoch, rel=1e-9)
    assert plan.gpu_hours_max == pytest.approx(8 * 3 * gpu_hours_per_epoch, rel=1e-9)  # 8 trials x up to 3 epochs
    assert plan.wall_hours_max == pytest.approx(plan.gpu_hours_max / (2 * 8), rel=1e-9)
    assert plan.sample_ds_config["train_micro_batch_size_per_gpu"] == 32
    assert plan.sample_ds_config["gradient_accumulation_steps"] == 1


def test_lora_plan_counts_frozen_weights_at_four_flops() -> None:
    spec = load_spec(SPACES / "gpt4allj_lora_gptj6b.yaml")
    plan = make_plan(spec, Assumptions())
    n = 6_053_381_344
    assert plan.flops_per_token == pytest.approx(6 * 0.001 * n + 4 * 0.999 * n + 12 * 28 * 4096 * 1024, rel=1e-9)


def test_dry_run_prints_the_plan_without_ray(tmp_path: Path) -> None:
    proc = run_tune(SPACES / "gpt4allj_full_gptj6b.yaml", tmp_path / "results", "--dry-run", "--cluster-gpus", "8")
    assert proc.returncode == 0, proc.stderr
    assert "= 8 GPUs" in proc.stdout and "concurrency on 8 GPUs: 1 trial(s) at once" in proc.stdout
    assert "GPU-hours, all trials at most:" in proc.stdout and '"stage": 2' in proc.stdout
    assert "ray never imported" in proc.stdout and not (tmp_path / "results").exists()


def test_a_cpu_space_or_an_unknown_hub_model_is_refused_by_key(tmp_path: Path) -> None:
    proc = run_tune(SPACES / "tiny_cpu.yaml", tmp_path / "results", "--dry-run")
    assert proc.returncode == 2 and "resources.gpus_per_worker: 0, a CPU space" in proc.stderr
    text = (SPACES / "gpt4allj_lora_gptj6b.yaml").read_text().replace("EleutherAI/gpt-j-6b", "someone/unknown-7b")
    (tmp_path / "s.yaml").write_text(text)
    proc = run_tune(tmp_path / "s.yaml", tmp_path / "results", "--dry-run")
    assert proc.returncode == 2 and "fixed.model: no shape known for 'someone/unknown-7b'" in proc.stderr


def test_tokens_per_epoch_are_counted_from_readable_data_and_the_model_counted_on_meta(tmp_path: Path) -> None:
    import dataclasses

    from gpt4all_ray.config import Resources
    from gpt4all_ray.data import build_tokenizer, load_split
    from gpt4all_ray.data.encode import encode_rows
    from gpt4all_ray.search.plan import count_train_tokens
    from gpt4all_ray.train.model import build_model

    spec = load_spec(SPACES / "tiny_cpu.yaml")
    spec = dataclasses.replace(spec, resources=Resources(workers_per_trial=2, gpus_per_worker=1.0))
    counted = count_train_tokens(spec)
    assert counted is not None
    tokens, vocab = counted
    data = load_split(spec.fixed)
    tokenizer = build_tokenizer(data)
    examples, _ = encode_rows(data.train, tokenizer, spec.fixed.max_length, spec.fixed.length_policy)
    steps = len(examples) // spec.fixed.global_batch
    mean = sum(len(e.input_ids) for e in examples) / len(examples)
    assert tokens == pytest.approx(mean * steps * spec.fixed.global_batch) and vocab == len(tokenizer)
    plan = make_plan(spec, Assumptions(), tokens, vocab)
    model = build_model(spec.fixed, tokenizer)
    weights = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert plan.flops_per_token == 6 * weights + 12 * 2 * 64 * spec.fixed.max_length
    assert plan.tokens_per_epoch == tokens


@pytest.mark.parametrize("keep", [False, True])
def test_checkpoint_bytes_and_peak_storage_by_hand(keep: bool) -> None:
    import dataclasses

    spec = load_spec(SPACES / "gpt4allj_full_gptj6b.yaml")
    spec = dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, keep_resume_state=keep))
    plan = make_plan(spec, Assumptions(cluster_gpus=16))
    n = 6_053_381_344
    # bf16 full fine-tuning: bf16 weights exported; resume: bf16 weights, fp32 master, two fp32 moments.
    assert plan.checkpoint.model == 2 * n and plan.checkpoint.resume == (2 + 4 + 8) * n
    running, finished = 2, 8 - 2  # 16 GPUs, 8 a trial
    kept = 2 * 16 * n if keep else 2 * n
    assert plan.peak_storage_bytes == running * 3 * 16 * n + finished * kept
    (line,) = [line for line in plan.lines if line.startswith("  storage at most:")]
    assert ("tune.keep_resume_state is set" in line) == keep


def test_a_lora_checkpoint_holds_the_adapters_not_the_frozen_base() -> None:
    plan = make_plan(load_spec(SPACES / "gpt4all_lora_llama7b.yaml"), Assumptions())
    trained = 6_738_415_616 * 0.001
    assert plan.checkpoint.model == pytest.approx(2 * trained) and plan.checkpoint.resume == pytest.approx(14 * trained)
