"""The package is laid out by the process each part runs in; these are its import rules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gpt4all_ray"

# Room -> the rooms it may import from. Shared pure modules (config, data, the divergence policy,
# the evaluation contract) are rooms too; cli may import anything.
ALLOWED = {
    "config": set(),
    "divergence": {"evaluation"},
    "evaluation": set(),
    "ray_private": set(),
    "data": {"config"},
    "train": {"config", "data", "divergence", "evaluation", "ray_private"},
    "experiment": {"config", "divergence", "evaluation", "ray_private", "train"},  # train: the checkpoint's layout
    "search": {"config", "data", "divergence", "evaluation", "ray_private", "train", "experiment"},
    "inspection": {"config", "data", "train", "experiment"},
}
HEAVY = ("torch", "ray", "deepspeed", "transformers", "optuna")


def room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if path.name == "__main__.py":
        return "cli"  # `python -m gpt4all_ray.data` is a command, as `gpt4all-ray data` is
    return parts[0] if len(parts) > 1 else path.stem


def imported_rooms(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt4all_ray":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gpt4all_ray.")}
    return found


def test_every_module_is_in_a_known_room() -> None:
    rooms = {room(p) for p in PACKAGE.rglob("*.py")}
    assert rooms - set(ALLOWED) <= {"__init__", "__main__", "api", "cli", "tune"}, rooms - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_rooms(module: Path) -> None:
    own = room(module)
    if own not in ALLOWED:
        return  # cli, the entry points and the package's API may import any room
    wrong = imported_rooms(module) - ALLOWED[own] - {own}
    assert not wrong, (
        f"{module.relative_to(PACKAGE)} ({own}/) imports {sorted(wrong)}; it may import {sorted(ALLOWED[own])}"
    )


@pytest.mark.parametrize(
    "module",
    [
        "gpt4all_ray.config",
        "gpt4all_ray.data",
        "gpt4all_ray.divergence",
        "gpt4all_ray.evaluation",
        "gpt4all_ray.cli.tune",
        "gpt4all_ray",
    ],
)
def test_light_modules_load_no_framework(module: str) -> None:
    """The config check, flag errors and --dry-run answer in a second: no torch, Ray or DeepSpeed."""
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"importing {module} loads {loaded}"


def test_the_training_loop_loads_no_ray() -> None:
    """The loop runs under torchrun too (the GPU check); Ray comes in only through train/ray_entry.py."""
    code = "import sys, gpt4all_ray.train.loop; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_a_worker_process_loads_nothing_of_the_driver_side() -> None:
    """The rule above holds when the code runs too: the package's __init__ loads the API lazily."""
    code = (
        "import sys, gpt4all_ray.train.ray_entry; "
        "print(' '.join(m for m in sys.modules if m.startswith(('gpt4all_ray.cli', 'gpt4all_ray.search', "
        "'gpt4all_ray.experiment', 'gpt4all_ray.inspection', 'gpt4all_ray.api'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
