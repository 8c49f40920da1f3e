"""docs/configuration.md is generated from the config's field docstrings and covers every key a
search space in search_spaces/ uses."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpt4all_ray.config import spec
from gpt4all_ray.config.reference import REGENERATE, SECTIONS, field_docstrings, main, reference_markdown

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def table_keys(text: str, section: str) -> dict[str, list[str]]:
    """Key -> its row's cells, in the table under `## `section``."""
    body = text.split(f"\n## `{section}`", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines() if line.startswith("| `")
    ]
    return {row[0].strip("`"): row for row in rows}


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text() == reference_markdown(), f"docs/configuration.md is out of date; regenerate it: {REGENERATE}"


def test_check_flag_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(reference_markdown().replace("Peak learning rate", "Learning rate"))
    assert main(["--check", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--check", str(DOC)]) == 0


@pytest.mark.parametrize("cls", [spec.TrialConfig, spec.Resources, spec.TuneSettings], ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls: type) -> None:
    docs = field_docstrings()[cls.__name__]
    assert list(docs) == [f.name for f in dataclasses.fields(cls)]  # the parser saw every field
    missing = [name for name, doc in docs.items() if not doc]
    assert not missing, f"{cls.__name__} fields without a docstring in spec.py: {missing}"


def test_the_reference_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys, gpt4all_ray.config.reference as r; r.reference_markdown(); "
        "print(sorted({'torch', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_each_table_marks_searchable_keys_and_lists_allowed_values() -> None:
    text = reference_markdown()
    fixed = table_keys(text, "fixed")
    assert {k for k, row in fixed.items() if row[3] == "yes"} == set(spec.SEARCHABLE)
    for key, values in (("lr_schedule", spec.SCHEDULES), ("collate", spec.COLLATIONS), ("precision", spec.PRECISIONS)):
        assert all(f"`{v}`" in fixed[key][-1] for v in values), key
    assert all(f"`{v}`" in table_keys(text, "tune")["searcher"][-1] for v in spec.SEARCHERS)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_key_of_every_search_space_is_in_the_reference(path: Path) -> None:
    text = reference_markdown()
    raw = yaml.safe_load(path.read_text())
    for key in raw:
        assert re.search(rf"^\| `{key}` \|", text, re.M), f"{path.name}: top-level key {key} not in the reference"
    for section, _cls, _what in SECTIONS:
        rows = table_keys(text, section)
        for key in raw.get(section) or {}:
            assert key in rows, f"{path.name}: {section}.{key} not in the reference"
    fixed = table_keys(text, "fixed")
    searched = set(raw.get("search") or {}) | {k for point in raw.get("enqueue") or [] for k in point}
    for key in searched:
        assert key in fixed and fixed[key][3] == "yes", f"{path.name}: search.{key} is not searchable in the reference"
    for dist in (d for v in (raw.get("search") or {}).values() for d in v):
        assert f"`{{{dist}: " in text, f"{path.name}: distribution {dist} not in the reference"


def test_every_trial_setting_belongs_to_one_concern_and_each_concern_has_settings() -> None:
    groups = {f.name: f.metadata.get("group") for f in dataclasses.fields(spec.TrialConfig)}
    assert {name for name, group in groups.items() if group not in spec.GROUPS} == set()
    assert set(groups.values()) == set(spec.GROUPS)


def test_a_rule_says_the_same_wherever_the_value_is_given(tmp_path: Path) -> None:
    """One validation style: a fixed value, a searched bound and an enqueued point meet one rule."""
    cases = {
        "fixed": {"fixed": {"val_fraction": 1.5}},
        "resources": {"resources": {"workers_per_trial": 0}},
        "tune": {"tune": {"asha_reduction_factor": 1}},
    }
    expected = {
        "fixed": "fixed.val_fraction: expected a fraction between 0 and 1, got 1.5",
        "resources": "resources.workers_per_trial: must be > 0, got 0",
        "tune": "tune.asha_reduction_factor: must be >= 2, got 1",
    }
    for where, raw in cases.items():
        with pytest.raises(spec.SpecError) as err:
            spec.parse_spec(raw, tmp_path / "space.yaml")
        assert str(err.value) == f"{tmp_path / 'space.yaml'}: {expected[where]}"
    with pytest.raises(spec.SpecError, match=r"search\.weight_decay: must be >= 0, got -0\.1"):
        spec.parse_spec({"search": {"weight_decay": {"uniform": [-0.1, 0.1]}}}, tmp_path / "space.yaml")
