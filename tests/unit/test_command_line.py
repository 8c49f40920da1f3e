"""`gpt4all-ray` and the Python API, up to the point where Ray would start."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all_ray import run_search
from gpt4all_ray.cli.main import COMMANDS, main
from gpt4all_ray.config import SpecError
from gpt4all_ray.config.reference import reference_markdown

REPO = Path(__file__).resolve().parents[2]


def test_without_a_command_it_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    printed = capsys.readouterr().err
    assert all(f"\n  {name} " in printed for name in COMMANDS)


def test_an_unknown_command_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tuen"]) == 2
    assert "unknown command 'tuen'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_help_space_prints_the_generated_reference_before_checking_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--mfu", "0.5", "--help-space"]) == 0  # --mfu alone would be refused
    assert capsys.readouterr().out == reference_markdown()


def test_the_console_script_is_installed_and_runs_a_dry_run() -> None:
    script = shutil.which("gpt4all-ray", path=str(Path(sys.executable).parent))
    assert script, "gpt4all-ray is not installed beside this Python (pip install -e .)"
    proc = subprocess.run(
        [script, "tune", "--dry-run", "--space", "gpt4all_lora_llama7b"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "GPU-hours" in proc.stdout


def test_run_search_refuses_a_space_with_resume() -> None:
    with pytest.raises(ValueError, match="keeps its space"):
        run_search("tiny_cpu", resume="some-experiment")


def test_run_search_names_a_missing_space_before_ray_starts(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such search-space file"):
        run_search(tmp_path / "missing.yaml", results_dir=tmp_path)
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
