"""`python -m gpt4all_ray.inspection.analyze` on a checkpoint the real worker trained (two DeepSpeed ranks):
the trained model stops and answers exactly where the untrained one does not, the worker's
all-reduced probes equal the analysis's single-process ones, and the outputs are complete."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import load_split
from tests.integration.conftest import REPO, run_worker_cases, subprocess_env

pytestmark = pytest.mark.integration
SELF_INSTRUCT = REPO.parent / "shared" / "data" / "self-instruct-user-oriented-instructions.jsonl"
TRAINED = {"epochs": 3, "learning_rate": 0.004, "lr_schedule": "constant_with_warmup", "warmup_steps": 25}


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gpt4all_ray.inspection.analyze", *args]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analyze")
    run_worker_cases(out, {"trained": TRAINED}, world=2)
    extra = ["--self-instruct", str(SELF_INSTRUCT)] if SELF_INSTRUCT.is_file() else []
    proc = analyze(str(out / "trained" / "model"), "--probes", "32", "--out", str(out / "analysis"), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_trained_checkpoint_stops_and_answers_where_the_untrained_one_does_not(trained: Path) -> None:
    probes = json.loads((trained / "analysis" / "analysis.json").read_text())["probes"]
    print(json.dumps(probes, indent=1))
    assert probes["tuned"]["stop_rate"] > probes["base"]["stop_rate"]
    assert probes["tuned"]["exact_match"] > probes["base"]["exact_match"]
    assert probes["tuned"]["mean_new_tokens"] < probes["base"]["mean_new_tokens"]


def test_worker_probes_over_two_ranks_equal_the_analysis_of_the_saved_checkpoint(trained: Path) -> None:
    reports = [json.loads(line) for line in (trained / "trained" / "metrics.jsonl").read_text().splitlines()]
    best = min(reports, key=lambda r: r["val_loss"])
    analysed = json.loads((trained / "analysis" / "analysis.json").read_text())["probes"]["tuned"]
    for key in ("stop_rate", "mean_new_tokens", "repetition_rate", "exact_match"):
        assert reports[-1][f"probe_{key}"] == pytest.approx(best[f"probe_{key}"])  # carried: the best's
        assert best[f"probe_{key}"] == pytest.approx(analysed[key], abs=1e-9), key


def test_outputs_one_row_per_validation_example_and_both_maps(trained: Path) -> None:
    folder = trained / "analysis"
    table = pq.read_table(folder / "examples.parquet").to_pylist()
    validation = load_split(TrialConfig(**TRAINED)).val
    assert [r["prompt"] for r in table] == [r["prompt"] for r in validation]
    columns = {"source", "prompt_type", "response_tokens", "loss", "gpt4all_loss", "base_loss", "tuned_x", "base_y"}
    assert columns <= set(table[0])
    assert all(math.isfinite(r["loss"]) and r["base_loss"] > r["loss"] for r in table[:5])
    for png in ("loss_map.png", "loss_by_length.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (folder / "summary.md").read_text()
    assert "## Loss by source" in summary and "| creative |" in summary
    assert "## The 20 highest-loss examples" in summary


@pytest.mark.skipif(not SELF_INSTRUCT.is_file(), reason="needs ../shared/data (real self-instruct file)")
def test_self_instruct_file_parses_and_gives_a_finite_perplexity(trained: Path) -> None:
    result = json.loads((trained / "analysis" / "analysis.json").read_text())["self_instruct"]
    records = [json.loads(line) for line in SELF_INSTRUCT.read_text().splitlines() if line.strip()]
    assert result["instances"] == sum(len(r["instances"]) for r in records)
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1


def test_bad_paths_are_refused_by_name(tmp_path: Path, trained: Path) -> None:
    proc = analyze(str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "not a gpt4all-ray checkpoint" in proc.stderr
    proc = analyze(str(trained / "trained" / "model"), "--data", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and "--data" in proc.stderr and "missing.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
