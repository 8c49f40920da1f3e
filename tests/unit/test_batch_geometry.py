"""Searchable batch geometry (per_device_batch at a fixed global batch, so gradient accumulation
with it; max_length) and warmup_ratio as an alternative to warmup_steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpt4all_ray.config import SpecError, TrialConfig, load_spec
from gpt4all_ray.search.plan import Assumptions, make_plan
from gpt4all_ray.search.warm_starts import GPT4ALL_ROWS, TRAINING_LOG, from_training_log
from gpt4all_ray.train.ds_config import deepspeed_config
from tests.unit.test_config import _DELETE, write

GPTJ_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "gpt4allj_lora_gptj6b.yaml"


def test_per_device_batch_is_searched_at_a_fixed_global_batch(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, {"search.per_device_batch": {"choice": [2, 4, 8]}, "fixed.per_device_batch": _DELETE})
    )
    workers = spec.resources.workers_per_trial
    for batch in spec.search["per_device_batch"].args:
        ds = deepspeed_config(spec.trial_config({"per_device_batch": batch}), workers)
        assert ds["train_micro_batch_size_per_gpu"] == batch
        assert ds["gradient_accumulation_steps"] == spec.fixed.global_batch // (batch * workers)
        assert ds["train_batch_size"] == spec.fixed.global_batch  # what the optimizer steps on stays fixed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"search.per_device_batch": {"int": [2, 8]}, "fixed.per_device_batch": _DELETE},
            "search.per_device_batch: int: search it with choice",
        ),
        (
            {"search.per_device_batch": {"choice": [4, 3]}, "fixed.per_device_batch": _DELETE},
            "search.per_device_batch: global_batch 16 is not a multiple of per_device_batch x workers_per_trial "
            "= 3 x 2 = 6",
        ),
        (
            {"search.per_device_batch": {"choice": [0, 4]}, "fixed.per_device_batch": _DELETE},
            "search.per_device_batch: must be > 0, got 0",
        ),
        (
            {"search.max_length": {"uniform": [64, 256]}, "fixed.max_length": _DELETE},
            "search.max_length: uniform: max_length is an integer",
        ),
        (
            {"search.max_length": {"int": [64, 256]}, "fixed.max_length": _DELETE},
            "search.max_length: int: search it with choice, a list of the values to try",
        ),
        ({"fixed.warmup_ratio": 1.0}, "fixed.warmup_ratio: expected a fraction in [0, 1), got 1.0"),
        ({"fixed.warmup_ratio": 0.1}, "fixed.warmup_ratio: is an alternative to warmup_steps; set one of the two"),
        (
            {"search.warmup_ratio": {"uniform": [0.0, 0.2]}, "fixed.warmup_steps": 5, "search.warmup_steps": _DELETE},
            "search.warmup_ratio: is an alternative to warmup_steps; set one of the two",
        ),
    ],
)
def test_bad_geometry_or_warmup_is_refused_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, change)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert f"{path}: " in str(err.value)
    assert message in str(err.value)


def test_an_enqueued_batch_that_cannot_make_the_global_batch_is_refused(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, {}))
    point = {key: dist.args[0] for key, dist in spec.search.items()} | {"per_device_batch": 3}
    path = write(
        tmp_path, {"search.per_device_batch": {"choice": [4, 8]}, "fixed.per_device_batch": _DELETE, "enqueue": [point]}
    )
    with pytest.raises(SpecError, match=r"enqueue\[0\].per_device_batch: global_batch 16 is not a multiple"):
        load_spec(path)


def test_warmup_ratio_replaces_warmup_steps(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, {"search.warmup_steps": _DELETE, "fixed.warmup_ratio": 0.1}))
    assert spec.fixed.warmup_steps == 0  # not the default 10: the ratio alone decides
    for total_steps in (7, 100, 1234):
        assert spec.fixed.warmup_for(total_steps) == round(0.1 * total_steps)
    searched = load_spec(
        write(tmp_path, {"search.warmup_steps": _DELETE, "search.warmup_ratio": {"uniform": [0, 0.2]}})
    )
    cfg = searched.trial_config({"warmup_ratio": 0.05})
    assert (cfg.warmup_steps, cfg.warmup_for(200)) == (0, 10)
    assert TrialConfig(warmup_steps=12).warmup_for(200) == 12  # warmup_steps alone: as before


def test_training_log_warm_starts_map_their_warmup_to_a_ratio(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, {"search.warmup_steps": _DELETE, "search.warmup_ratio": {"uniform": [0.0, 0.5]}}))
    for run, point in zip(TRAINING_LOG, from_training_log(spec, 1000, scale_lr=False), strict=True):
        their_total = GPT4ALL_ROWS * 0.95 / run.global_batch * run.values["epochs"]
        assert point["warmup_ratio"] == pytest.approx(run.values["warmup_steps"] / their_total)
        assert "warmup_steps" not in point


def test_the_dry_run_plans_for_the_longest_searched_max_length(tmp_path: Path) -> None:
    fixed = load_spec(GPTJ_SPACE)
    raw = yaml.safe_load(GPTJ_SPACE.read_text())
    longest = fixed.fixed.max_length * 2
    raw["search"]["max_length"] = {"choice": [fixed.fixed.max_length // 2, longest]}
    del raw["fixed"]["max_length"]
    for point in raw.get("enqueue", []):
        point["max_length"] = longest
    path = tmp_path / "gptj.yaml"
    path.write_text(yaml.safe_dump(raw))
    plan, base = make_plan(load_spec(path), Assumptions()), make_plan(fixed, Assumptions())
    assert f"context {longest})" in "\n".join(plan.lines)
    assert plan.flops_per_token > base.flops_per_token


def test_each_searched_max_length_is_built_and_checked_before_ray(tmp_path: Path) -> None:
    from gpt4all_ray.cli.preflight import check_data
    from gpt4all_ray.data.cache import BUILDS

    change = {"search.max_length": {"choice": [96, 160]}, "fixed.max_length": _DELETE, "fixed.data_rows": 300}
    spec = load_spec(write(tmp_path, change))
    assert spec.fixed.max_length == 96  # the first choice stands for the fixed value
    data = check_data(spec, tmp_path / "cache")
    builds = [json.loads(line) for line in (tmp_path / "cache" / BUILDS).read_text().splitlines()]
    assert len(builds) == 2 and data.folder.name == builds[0]["key"]  # one build a choice; the trials map them
    # A choice that leaves no room for a prompt is refused before Ray, naming the key and the length.
    tight = load_spec(write(tmp_path, change | {"search.max_length": {"choice": [160, 12]}}))
    with pytest.raises(SpecError, match="search.max_length: max_length 12 leaves no room for a prompt"):
        check_data(tight, tmp_path / "cache")
