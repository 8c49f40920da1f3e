"""Every reader of what a worker reports goes through gpt4all_ray/evaluation.py: no other module
reads a reported metric by its key (the key names live beside the Evaluation fields only)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from gpt4all_ray.evaluation import PHASE_SUFFIX, PHASES, PROBE_PREFIX, Evaluation

PACKAGE = Path(__file__).resolve().parents[2] / "gpt4all_ray"
KEYS = {f.name for f in dataclasses.fields(Evaluation)} - {"phase_seconds", "probes"}
KEYS |= {f"{phase}{PHASE_SUFFIX}" for phase in PHASES}
# Dicts that are not reports but share a key name with one, each with what it is.
NOT_REPORTS = {
    ("train/faults.py", "step"): "the fault's own spec (GPT4ALL_RAY_FAULT)",
    ("train/loop.py", "lr"): "an optimizer param group",
    ("inspection/analyze.py", "probe_prompts"): "analysis.json's own summary",
}


def metric_reads(tree: ast.AST) -> list[str]:
    """`x["val_loss"]`, `x.get("val_loss")`, `"val_loss" in x` and probe_* keys, read anywhere."""
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            first = node.args[0] if node.args else None
            key = first.value if isinstance(first, ast.Constant) else None
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.ops[0], ast.In):
            key = node.left.value
        if isinstance(key, str) and (key in KEYS or key.startswith(PROBE_PREFIX)):
            found.append(key)
    return found


def test_the_scan_finds_a_read_by_key() -> None:
    code = "r['val_loss'] + r.get('epoch_s') + ('mfu' in r) + r['probe_stop_rate'] + r['learning_rate']"
    assert sorted(metric_reads(ast.parse(code))) == ["epoch_s", "mfu", "probe_stop_rate", "val_loss"]


@pytest.mark.parametrize(
    "module",
    [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "evaluation.py"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_module_reads_a_reported_metric_by_key(module: Path) -> None:
    where = str(module.relative_to(PACKAGE))
    reads = [key for key in metric_reads(ast.parse(module.read_text())) if (where, key) not in NOT_REPORTS]
    assert not reads, f"{module.relative_to(PACKAGE)} reads reported metrics by key ({reads}); use Evaluation"
