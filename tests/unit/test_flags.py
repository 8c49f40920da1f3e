"""Every flag of `python -m gpt4all_ray.tune` does something in the mode it is given in, or is
refused there with exit 2, naming it."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from gpt4all_ray.cli.tune import parse_args


def refusal(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    (line,) = err.getvalue().strip().splitlines()
    return line


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--mfu", "0.5"], "--mfu: only --dry-run uses it"),
        (["--mfu", "0"], "--mfu: only --dry-run uses it"),  # 0 is a value given, not the flag left out
        (["--cluster-gpus", "8"], "--cluster-gpus: only --dry-run uses it"),
        (["--usd-per-gpu-hour", "2"], "--usd-per-gpu-hour: only --dry-run uses it"),
        (["--dry-run", "--name", "x"], "--name: a --dry-run starts and writes nothing"),
        (["--dry-run", "--results-dir", "r"], "--results-dir: a --dry-run starts and writes nothing"),
        (["--dry-run", "--storage", "s3://b/x"], "--storage: a --dry-run starts and writes nothing"),
        (["--dry-run", "--resume", "x"], "--resume: a --dry-run starts and writes nothing"),
        (["--resume", "x", "--space", "tiny_cpu"], "--space: a resumed experiment runs the space"),
        (["--resume", "x", "--name", "y"], "--name: a resumed experiment runs the space"),
        (["--resume", "x", "--num-trials", "20"], "--num-trials: a resumed experiment runs the space"),
    ],
)
def test_a_flag_the_mode_ignores_is_refused_by_name(argv: list[str], named: str) -> None:
    line = refusal(argv)
    assert line.startswith(f"error: {named}") and line.endswith(f"leave {named.split(':')[0]} out")


@pytest.mark.parametrize(
    "argv",
    [
        ["--dry-run", "--mfu", "0.5", "--cluster-gpus", "8", "--usd-per-gpu-hour", "2", "--num-trials", "4"],
        ["--resume", "x", "--results-dir", "r"],  # where the named experiment is
        ["--space", "tiny_cpu", "--name", "x", "--results-dir", "r", "--num-trials", "3"],
    ],
)
def test_flags_each_mode_uses_are_taken(argv: list[str]) -> None:
    parse_args(argv)


def test_the_dry_run_plans_the_trial_count_asked_for(tmp_path: Path) -> None:
    from tests.unit.cli import run_tune
    from tests.unit.test_plan import SPACES

    proc = run_tune(SPACES / "gpt4allj_full_gptj6b.yaml", tmp_path / "results", "--dry-run", "--num-trials", "3")
    assert proc.returncode == 0, proc.stderr
    assert "  trials: 3, up to" in proc.stdout and not (tmp_path / "results").exists()
