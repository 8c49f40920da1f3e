"""Search-space YAML validation: every bad input is refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpt4all_ray.config import SpecError, load_spec
from tests.unit.cli import run_tune

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "search_spaces" / "tiny_cpu.yaml"


def write(tmp_path: Path, change: dict) -> Path:
    raw = yaml.safe_load(DEFAULT.read_text())
    for dotted, value in change.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


_DELETE = object()


def test_default_space_loads_with_every_required_hyperparameter() -> None:
    spec = load_spec(DEFAULT)
    assert set(spec.search) >= {"learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "epochs"}
    assert spec.search["learning_rate"].kind == "loguniform"
    assert set(spec.search["lr_schedule"].args) == {"constant_with_warmup", "linear", "cosine"}
    assert spec.resources.workers_per_trial >= 2
    assert spec.fixed.global_batch % (spec.fixed.per_device_batch * spec.resources.workers_per_trial) == 0


def test_exponent_floats_are_floats(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(DEFAULT.read_text().replace("[3.0e-4, 3.0e-2]", "[1e-4, 3e-2]"))
    assert load_spec(path).search["learning_rate"].args == (1e-4, 3e-2)


BAD = [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"fixed.learning_rat": 0.1}, "fixed.learning_rat: unknown key (did you mean 'learning_rate'?)"),
    ({"search.momentum": {"uniform": [0.1, 0.2]}}, "search.momentum: unknown key"),
    ({"resources.gpus": 1}, "resources.gpus: unknown key"),
    ({"fixed.max_length": "long"}, "fixed.max_length: expected an integer, got 'long'"),
    ({"fixed.zero_stage": 2.5}, "fixed.zero_stage: expected an integer"),
    ({"search.learning_rate": {"loguniform": ["a", 0.1]}}, "search.learning_rate.loguniform: expected a number"),
    ({"search.lr_schedule": {"choice": []}}, "search.lr_schedule: choice: expected a non-empty list"),
    ({"search.lr_schedule": {"choice": ["linear", "exponential"]}}, "search.lr_schedule: expected one of"),
    ({"search.learning_rate": {"loguniform": [0.0, 0.1]}}, "search.learning_rate: loguniform: low must be > 0"),
    ({"search.learning_rate": {"uniform": [-0.1, 0.1]}}, "search.learning_rate: must be > 0, got -0.1"),
    ({"search.learning_rate": {"loguniform": [0.1, 0.01]}}, "expected low < high"),
    ({"search.learning_rate": _DELETE, "fixed.learning_rate": 0.0}, "fixed.learning_rate: must be > 0, got 0.0"),
    ({"search.epochs": {"uniform": [1.0, 3.0]}}, "search.epochs: uniform: epochs is an integer"),
    ({"fixed.global_batch": 20}, "fixed.global_batch: 20 is not a multiple of per_device_batch x workers_per_trial"),
    ({"fixed.learning_rate": 0.1}, "search.learning_rate: is also set in fixed"),
    ({"fixed.precision": "fp8"}, "fixed.precision: expected one of fp32, bf16, fp16, got 'fp8'"),
    ({"tune.num_trials": 0}, "tune.num_trials: must be > 0"),
    ({"resources.cpus_per_worker": 0}, "resources.cpus_per_worker: must be > 0"),
    ({"enqueue": [{"learning_rate": 0.1}]}, "enqueue[0]: missing searched key(s)"),
    ({"fixed.precision": "fp16"}, "fixed.precision: fp16 needs GPUs (resources.gpus_per_worker > 0)"),
    ({"fixed.offload_params": True}, "fixed.offload_params: needs zero_stage 3, got 0"),
    ({"fixed.offload_optimizer": True, "fixed.zero_stage": 0}, "fixed.offload_optimizer: needs zero_stage 1, 2 or 3"),
    ({"fixed.lora_targets": "q_proj"}, "fixed.lora_targets: is only used with method: lora (method is full)"),
    ({"fixed.model": "not a/model name"}, "fixed.model: expected one of tiny-gptj, tiny-gptj-wide, tiny-llama, a"),
    ({"fixed.gradient_checkpointing": "yes"}, "fixed.gradient_checkpointing: expected true/false, got 'yes'"),
    ({"fixed.eval_every_steps": -5}, "fixed.eval_every_steps: must be >= 0"),
    ({"tune.worker_restarts": -1}, "tune.worker_restarts: must be >= 0"),
    ({"tune.warm_start": "log"}, "tune.warm_start: expected training_log (or leave it out), got 'log'"),
    ({"fixed.smoothing": 1.0}, "fixed.smoothing: expected a weight in [0, 1), got 1.0"),
    ({"fixed.patience": 0}, "fixed.patience: must be >= 1, got 0"),
    ({"tune.scheduler": "pbt"}, "tune.scheduler: expected asha (or leave it out), got 'pbt'"),
    ({"tune.gpu_hours": 10.0}, "tune.gpu_hours: is a budget of GPU time, but resources.gpus_per_worker is 0"),
    ({"tune.time_budget_s": -1.0}, "tune.time_budget_s: must be >= 0"),
    ({"tune.searcher": "grid"}, "tune.searcher: expected one of tpe, gp, random, got 'grid'"),
    ({"tune.min_stop_rate": 1.5}, "tune.min_stop_rate: expected a share in [0, 1], got 1.5"),
    ({"tune.min_stop_rate": 0.9, "fixed.probe_prompts": 0}, "tune.min_stop_rate: needs generation probes"),
    ({"fixed.probe_prompts": -1}, "fixed.probe_prompts: must be >= 0 (0: no generation probes)"),
    ({"fixed.probe_max_new_tokens": 0}, "fixed.probe_max_new_tokens: must be > 0"),
    ({"fixed.stop_on_divergence": "no"}, "fixed.stop_on_divergence: expected true/false, got 'no'"),
    (
        {"resources.accelerator_type": "A100-80G"},
        "resources.accelerator_type: names a GPU, but resources.gpus_per_worker is 0",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_space_is_refused_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, change)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="expected a mapping at the top level"):
        load_spec(path)
    with pytest.raises(SpecError, match="no such search-space file"):
        load_spec(tmp_path / "missing.yaml")


TOO_FEW_ROWS = ({"fixed.data_rows": 12}, "fixed.data_rows: 11 training rows after cleaning and the validation split")


@pytest.mark.parametrize(("change", "message"), [BAD[1], BAD[7], BAD[12], BAD[14], TOO_FEW_ROWS])
def test_cli_refuses_bad_space_before_ray_starts(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, change)
    proc = run_tune(path, tmp_path / "results")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "ray never imported" in proc.stdout


def test_space_by_name_and_data_summary_before_ray(tmp_path: Path) -> None:
    from gpt4all_ray.cli.preflight import check_data
    from gpt4all_ray.cli.tune import resolve_space

    assert resolve_space(Path("tiny_cpu")).resolve() == DEFAULT
    summary = check_data(load_spec(DEFAULT), tmp_path).report.summary()
    assert summary.startswith("2400 rows in,") and "dropped as duplicate" in summary and "validation" in summary


def test_asha_scheduler_rungs_in_epochs_of_the_space() -> None:
    import dataclasses as dc

    from ray.tune.schedulers import ASHAScheduler

    from gpt4all_ray.search.driver import make_scheduler

    spec = load_spec(DEFAULT)
    assert make_scheduler(spec) is None
    asha = make_scheduler(dc.replace(spec, tune=dc.replace(spec.tune, scheduler="asha", asha_grace_epochs=0.5)))
    assert isinstance(asha, ASHAScheduler)  # Ray's, recording its stops (stopping.RecordedASHA)
    assert asha._time_attr == "epoch_progress" and asha._max_t == max(spec.search["epochs"].args)
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [1.5, 0.5]  # rungs at 0.5 and 1.5 epochs


@pytest.mark.parametrize("model,says", [("tiny-gptj", "is built in"), (".", "is a local folder")])
def test_a_hugging_face_cache_for_a_model_that_downloads_nothing_is_refused(
    tmp_path: Path, model: str, says: str
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"name: x\nfixed: {{model: '{model}', hf_cache: /mnt/shared/huggingface}}\n")
    with pytest.raises(SpecError, match=f"fixed.hf_cache: is only used for a Hub model; model .* {says}"):
        load_spec(space)


def test_a_relative_hugging_face_cache_is_refused(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("name: x\nfixed: {model: EleutherAI/gpt-j-6b, hf_cache: shared/huggingface}\n")
    with pytest.raises(SpecError, match="fixed.hf_cache: .*expected an absolute path every node sees"):
        load_spec(space)
