"""The worker loop without Ray (the torchrun seam): real DeepSpeed engines, one process, gloo.

Each case trains one epoch, saves a Hugging Face checkpoint (full model or PEFT adapter), and the
reloaded checkpoint must give the validation loss the loop reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration

SCRIPT = """
import json, os, shutil, sys
from gpt4all_ray.config import TrialConfig
from gpt4all_ray.worker import train

out = sys.argv[1]
cfg = TrialConfig(**json.loads(sys.argv[2]))

class FolderReporter:
    def report(self, metrics, checkpoint_dir):
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\\n")
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, os.path.join(out, "checkpoint"), dirs_exist_ok=True)

train(cfg, FolderReporter(), tb_dir=os.path.join(out, "tb"))
"""


def run_loop(tmp_path: Path, **overrides: object) -> list[dict]:
    cfg = {
        "data_rows": 400,
        "val_fraction": 0.1,
        "epochs": 1,
        "per_device_batch": 8,
        "global_batch": 16,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
    } | overrides
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(cfg)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("method", "model", "zero_stage", "precision"),
    [
        ("full", "tiny-gptj", 0, "fp32"),
        ("full", "tiny-gptj", 3, "bf16"),  # ZeRO-3: weights gathered from all ranks before saving
        ("lora", "tiny-gptj", 2, "fp32"),
        ("lora", "tiny-llama", 1, "bf16"),
    ],
)
def test_loop_trains_saves_and_reloads(
    tmp_path: Path, method: str, model: str, zero_stage: int, precision: str
) -> None:
    from gpt4all_ray.evaluate import load_checkpoint, validation_loss

    metrics = run_loop(tmp_path, method=method, model=model, zero_stage=zero_stage, precision=precision)
    assert len(metrics) == 1 and metrics[0]["stop_reason"] == "completed"
    folder = tmp_path / "checkpoint"
    adapter = (folder / "adapter_config.json").is_file()
    assert adapter == (method == "lora")
    model_obj, tokenizer, cfg = load_checkpoint(folder)
    assert cfg.method == method and tokenizer.pad_token_id != tokenizer.eos_token_id
    if adapter:
        from peft import PeftModel

        assert isinstance(model_obj, PeftModel)
    assert json.loads((folder / "ds_config.json").read_text())["zero_optimization"]["stage"] == zero_stage
    assert validation_loss(folder) == pytest.approx(metrics[0]["val_loss"], rel=1e-4)


def test_loop_trains_on_a_data_file_with_mapped_columns(tmp_path: Path) -> None:
    from gpt4all_ray.data.synthetic import generate_rows

    rows = [{"instruction": r["prompt"], "output": r["response"], "task": r["source"]} for r in generate_rows(400, 3)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = run_loop(
        tmp_path,
        data=str(data),
        prompt_column="instruction",
        response_column="output",
        source_column="task",
        exclude_sources="creative",
    )
    assert metrics[0]["stop_reason"] == "completed" and metrics[0]["val_loss"] > 0
    saved = json.loads((tmp_path / "checkpoint" / "trial_config.json").read_text())
    assert saved["data"] == str(data) and saved["exclude_sources"] == "creative"


def test_loop_trains_packed_and_its_loss_matches_unpacked_evaluation(tmp_path: Path) -> None:
    from gpt4all_ray.evaluate import validation_loss

    metrics = run_loop(tmp_path, collate="pack", model="tiny-llama", zero_stage=2)
    assert metrics[0]["stop_reason"] == "completed"
    # The loop evaluated packed; evaluate.py pads each row alone: the same loss.
    assert validation_loss(tmp_path / "checkpoint") == pytest.approx(metrics[0]["val_loss"], rel=1e-4)


def test_checkpoint_tokenizer_is_the_training_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from gpt4all_ray.config import TrialConfig
    from gpt4all_ray.data import build_tokenizer, load_split

    run_loop(tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path / "checkpoint")
    trained = build_tokenizer(load_split(TrialConfig(data_rows=400, val_fraction=0.1)))
    assert saved.backend_tokenizer.to_str() == trained.backend_tokenizer.to_str()
    assert (saved.pad_token_id, saved.eos_token_id) == (trained.pad_token_id, trained.eos_token_id)
