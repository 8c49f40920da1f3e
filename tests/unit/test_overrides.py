"""`--set SECTION.KEY=VALUE`: one setting of a space changed from the command line, checked as if
the file held it, and kept in the experiment's copy of the space for --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt4all_ray.cli.tune import experiment_spec, parse_args, space_as_run
from gpt4all_ray.config import SpecError, load_spec
from gpt4all_ray.experiment.files import FORMAT
from tests.unit.cli import run_tune

DEFAULT = Path(__file__).resolve().parents[2] / "search_spaces" / "tiny_cpu.yaml"
GP_ASHA = ["tune.searcher=gp", "tune.scheduler=asha", "tune.num_trials=30", "fixed.max_length=96"]


def test_overrides_set_typed_values() -> None:
    plain = load_spec(DEFAULT)
    spec = load_spec(DEFAULT, [*GP_ASHA, "fixed.min_delta=5e-3", "fixed.stop_on_divergence=false"])
    assert (spec.tune.searcher, spec.tune.scheduler, spec.tune.num_trials) == ("gp", "asha", 30)
    assert spec.fixed.max_length == 96 and spec.fixed.min_delta == 0.005 and spec.fixed.stop_on_divergence is False
    assert (plain.tune.searcher, plain.tune.scheduler, plain.fixed.max_length) == ("tpe", "", 128)
    assert spec.search == plain.search and spec.resources == plain.resources


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("searcher=gp", "--set searcher=gp: expected SECTION.KEY=VALUE"),
        ("tune.searcher", "--set tune.searcher: expected SECTION.KEY=VALUE"),
        ("search.epochs=3", "with SECTION one of fixed, resources, tune"),
        ("tune.asha.grace=1", "--set tune.asha.grace=1: expected SECTION.KEY=VALUE"),
        ("tune.sercher=gp", "tune.sercher"),
        ("tune.searcher=bayes", "tune.searcher"),
        ("tune.num_trials=0", "tune.num_trials: must be > 0"),
        ("fixed.max_length=[1", "--set fixed.max_length=[1: '[1' is not a YAML value"),
    ],
)
def test_bad_overrides_are_refused_naming_them(override: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(DEFAULT, [override])
    assert message in str(err.value)


def test_the_experiments_copy_of_the_space_holds_the_overrides(tmp_path: Path) -> None:
    copy = tmp_path / "space.yaml"
    copy.write_text(space_as_run(DEFAULT, GP_ASHA))
    assert copy.read_text().startswith(f"# {DEFAULT} with --set tune.searcher=gp --set tune.scheduler=asha")
    resumed, direct = load_spec(copy), load_spec(DEFAULT, GP_ASHA)
    assert (resumed.fixed, resumed.search, resumed.resources, resumed.tune) == (
        direct.fixed,
        direct.search,
        direct.resources,
        direct.tune,
    )
    assert space_as_run(DEFAULT, []) == DEFAULT.read_text()  # no --set: the file as it is, comments too


def test_resume_refuses_set(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    (exp / "ray" / "tune").mkdir(parents=True)
    (exp / "space.yaml").write_text(DEFAULT.read_text())
    settings = {"space": str(DEFAULT), "num_trials": 6, "storage": None}
    (exp / "experiment.json").write_text(json.dumps(settings))
    with pytest.raises(SpecError, match=r"started by an earlier gpt4all-ray \(experiment.json format 1"):
        experiment_spec(parse_args(["--resume", str(exp)]))
    (exp / "experiment.json").write_text(json.dumps(settings | {"format": FORMAT}))
    with pytest.raises(SpecError, match="a resumed experiment keeps its space"):
        experiment_spec(parse_args(["--resume", str(exp), "--set", "tune.searcher=gp"]))
    spec, _ = experiment_spec(parse_args(["--resume", str(exp)]))
    assert spec.tune.num_trials == 6


def test_cli_refuses_a_bad_override_before_ray_starts(tmp_path: Path) -> None:
    proc = run_tune(DEFAULT, tmp_path / "results", "--set", "tune.scheduler=hyperband")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "tune.scheduler" in proc.stderr
    assert "ray never imported" in proc.stdout
