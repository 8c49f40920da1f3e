"""fixed.deepspeed: the user's DeepSpeed file merged over the generated config; a key the space
decides, set to another value, is refused naming the key and both values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gpt4all_ray.cli.preflight import check_deepspeed
from gpt4all_ray.config import SpecError, TrialConfig, load_spec
from gpt4all_ray.train.ds_config import DECIDED_BY, OTHER_NAMES, DeepSpeedConflict, deepspeed_config, generated_config
from tests.unit.cli import run_tune
from tests.unit.test_config import _DELETE, write

OWN = {
    "zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 50_000_000, "contiguous_gradients": True},
    "fp16": {"loss_scale_window": 500},
    "gradient_clipping": 1.0,  # the same value the space gives: no conflict
    "steps_per_print": 100,
}


def ds_file(tmp_path: Path, content: object, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


def test_own_keys_are_merged_over_the_generated_config(tmp_path: Path) -> None:
    cfg = TrialConfig(zero_stage=2, precision="fp16", deepspeed=str(ds_file(tmp_path, OWN)))
    ds = deepspeed_config(cfg, world_size=2)
    generated = generated_config(cfg, world_size=2)
    assert ds["zero_optimization"] == generated["zero_optimization"] | OWN["zero_optimization"]
    assert ds["fp16"] == generated["fp16"] | {"loss_scale_window": 500}  # loss scaling otherwise as generated
    assert ds["steps_per_print"] == 100
    untouched = set(generated) - set(OWN)
    assert {k: ds[k] for k in untouched} == {k: generated[k] for k in untouched}


CONFLICTS = [
    ({"train_batch_size": 32}, "train_batch_size = 32, but the space gives 16 (global_batch = 16)"),
    ({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu = 4, but the space gives 8"),
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps = 4, but the space gives 1"),
    ({"gradient_clipping": 0.5}, "gradient_clipping = 0.5, but the space gives 1.0 (grad_clip = 1.0)"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage = 3, but the space gives 2 (zero_stage = 2)"),
    ({"bf16": {"enabled": True}}, "bf16.enabled = true, but the space gives false (precision = 'fp32')"),
    ({"fp16": {"enabled": True}}, "fp16.enabled = true, but the space gives false (precision = 'fp32')"),
    (
        {"zero_optimization": {"offload_optimizer": {"device": "nvme"}}},
        'offload_optimizer.device = "nvme", but the space gives "none" (offload_optimizer = False)',
    ),
    (
        {"zero_optimization": {"offload_param": {"device": "cpu"}}},
        'offload_param.device = "cpu", but the space gives "none" (offload_params = False)',
    ),
    ({"zero_force_ds_cpu_optimizer": True}, "gpt4all-ray sets it to false (its optimizer is torch's AdamW)"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}, "but the space decides it (learning_rate = 0.001"),
    ({"scheduler": {"type": "WarmupLR"}}, 'sets scheduler = {"type": "WarmupLR"}, but the space decides it'),
    ({"zero_allow_untested_optimizer": False}, "gpt4all-ray sets it to true (its optimizer is torch's AdamW)"),
    ({"train_batch_size": 16.0}, "train_batch_size = 16.0, but the space gives 16"),  # recorded as given
]
# Ways round the check a review found, each refused.
AROUND = [
    ({"zero_optimization": True}, "sets zero_optimization = true; expected a section (a JSON object)"),
    ({"zero_optimization": None}, "sets zero_optimization = null; expected a section"),
    ({"zero_optimization": {"offload_optimizer": None}}, "sets zero_optimization.offload_optimizer = null; expected"),
    ({"bfloat16": {"enabled": True}}, "sets bfloat16, DeepSpeed's other name for bf16"),
    ({"zero_optimization": {"cpu_offload": True}}, "sets zero_optimization.cpu_offload, DeepSpeed's other name"),
    ({"zero_optimization": {"cpu_offload_param": True}}, "sets zero_optimization.cpu_offload_param, DeepSpeed's"),
    ({"zero_optimization": {"cpu_offload_use_pin_memory": True}}, "cpu_offload_use_pin_memory, DeepSpeed's other"),
    (
        {"zero_optimization": {"reduce_bucket_size": "auto"}},
        'reduce_bucket_size = "auto": DeepSpeed resolves no "auto"',
    ),
    # Settings of features the space turns off would do nothing.
    ({"fp16": {"loss_scale_window": 500}}, "sets fp16.loss_scale_window, which does nothing: precision is fp32"),
    (
        {"bf16": {"immediate_grad_update": True}},
        "sets bf16.immediate_grad_update, which does nothing: precision is fp32",
    ),
    (
        {"zero_optimization": {"offload_optimizer": {"pin_memory": False}}},
        "offload_optimizer.pin_memory, which does nothing: fixed.offload_optimizer is false",
    ),
    (
        {"zero_optimization": {"offload_param": {"buffer_count": 4}}},
        "offload_param.buffer_count, which does nothing: fixed.offload_params is false",
    ),
    ({"zero_optimization": {"stage3_prefetch_bucket_size": 1}}, "stage3_prefetch_bucket_size, which does nothing"),
]


@pytest.mark.parametrize(
    ("content", "message"), CONFLICTS + AROUND, ids=[m.split(" =")[0][:60] for _, m in CONFLICTS + AROUND]
)
def test_a_key_the_space_decides_is_refused_naming_both_values(tmp_path: Path, content: dict, message: str) -> None:
    path = ds_file(tmp_path, content)
    with pytest.raises(DeepSpeedConflict) as err:
        deepspeed_config(TrialConfig(zero_stage=2, deepspeed=str(path)), world_size=2)
    assert str(err.value).startswith(f"{path}: sets ")
    assert message in str(err.value)


def test_every_decided_key_and_other_name_has_a_refused_case() -> None:
    def paths(node: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in node.items():
            here = f"{prefix}{key}"
            known = here in DECIDED_BY or here in OTHER_NAMES
            found |= {here} if known or not isinstance(value, dict) else paths(value, here + ".")
        return found

    covered = set().union(*(paths(content) for content, _ in CONFLICTS + AROUND if isinstance(content, dict)))
    assert covered >= set(DECIDED_BY) | set(OTHER_NAMES)


def test_auto_on_a_key_the_space_decides_takes_the_spaces_value(tmp_path: Path) -> None:
    hf_style = {"train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": "auto"}}
    cfg = TrialConfig(zero_stage=2, deepspeed=str(ds_file(tmp_path, hf_style)))
    assert deepspeed_config(cfg, world_size=2) == generated_config(cfg, world_size=2)


def test_the_same_value_as_the_space_is_accepted(tmp_path: Path) -> None:
    cfg = TrialConfig(zero_stage=3, precision="bf16", offload_optimizer=True)
    same = {
        "train_batch_size": 16,
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False}},
        "bf16": {"enabled": True},
    }
    ds = deepspeed_config(dataclasses.replace(cfg, deepspeed=str(ds_file(tmp_path, same))), world_size=2)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}


def spec_with(tmp_path: Path, content: object, **change: object) -> Path:
    return write(tmp_path, {"fixed.deepspeed": str(ds_file(tmp_path, content)), **change})


def test_a_key_the_search_samples_is_refused_before_ray(tmp_path: Path) -> None:
    path = spec_with(tmp_path, {"gradient_clipping": 1.0}, **{"search.grad_clip": {"uniform": [0.5, 2.0]}})
    with pytest.raises(SpecError) as err:
        check_deepspeed(load_spec(path))
    assert f"{path}: fixed.deepspeed: " in str(err.value)
    assert (
        "sets gradient_clipping = 1.0, but the search samples grad_clip (search.grad_clip: uniform [0.5, 2.0])"
        in str(err.value)
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"zero_optimization": {"stage": 0,}}', "not valid JSON at line 1, column 35"),
        ("[1, 2]", "expected a JSON object of DeepSpeed settings, got list"),
    ],
)
def test_a_file_that_is_not_a_deepspeed_config_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = spec_with(tmp_path, content)
    with pytest.raises(SpecError, match=message) as err:
        load_spec(path)
    assert f"{path}: fixed.deepspeed: {tmp_path / 'ds.json'}: " in str(err.value)


def test_the_file_is_read_once_and_its_content_reaches_every_trial(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    ds_file(tmp_path, OWN | {"fp16": {}})
    spec = load_spec(write(tmp_path, {"fixed.deepspeed": "ds.json"}))  # relative to where the command runs
    assert spec.fixed.deepspeed == str(tmp_path / "ds.json")  # recorded absolute: trials run elsewhere
    (tmp_path / "ds.json").unlink()  # the trials need the content, not the file
    merged = deepspeed_config(spec.fixed, spec.resources.workers_per_trial, spec.deepspeed_user)
    assert merged["zero_optimization"]["overlap_comm"] is False


def test_a_searched_batch_with_an_own_file_is_checked_per_choice(tmp_path: Path) -> None:
    change = {"search.per_device_batch": {"choice": [1, 2]}, "fixed.per_device_batch": _DELETE, "fixed.global_batch": 4}
    spec = load_spec(spec_with(tmp_path, {"zero_optimization": {"overlap_comm": False}}, **change))
    assert spec.fixed.per_device_batch == 1  # the first choice stands for the checks before Ray
    check_deepspeed(spec)
    proc = run_tune(spec.path, tmp_path / "results", "--dry-run")
    assert "ray never imported" in proc.stdout and "gpus_per_worker: 0, a CPU space" in proc.stderr  # not a batch error


def test_a_missing_file_is_refused_by_the_space(tmp_path: Path) -> None:
    path = write(tmp_path, {"fixed.deepspeed": str(tmp_path / "nope.json")})
    with pytest.raises(SpecError, match="fixed.deepspeed: expected a DeepSpeed JSON file, got "):
        load_spec(path)


def test_cli_and_dry_run_refuse_a_conflict_before_ray_starts(tmp_path: Path) -> None:
    path = spec_with(tmp_path, {"gradient_accumulation_steps": 2})
    for extra in ((), ("--dry-run",)):
        proc = run_tune(path, tmp_path / "results", *extra)
        assert proc.returncode == 2, proc.stderr
        assert (
            "fixed.deepspeed: " in proc.stderr
            and "gradient_accumulation_steps = 2, but the space gives 1" in proc.stderr
        )
        assert "ray never imported" in proc.stdout
        assert not (tmp_path / "results").exists()
