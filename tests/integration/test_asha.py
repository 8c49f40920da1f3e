"""ASHA on step-level evaluations, for real: trials that fall behind at a rung (half an epoch
here) are stopped by the scheduler, and the report counts the compute that saved."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, ray_bin, subprocess_env

pytestmark = pytest.mark.integration


COMMAND = [sys.executable, "-m", "gpt4all_ray.tune", "--space", "tests/integration/asha_space.yaml"]


@pytest.fixture(scope="module")
def asha_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The uninterrupted ASHA search: its results folder and its output."""
    tmp_path = tmp_path_factory.mktemp("asha")
    command = [*COMMAND, "--set", "tune.scheduler=asha", "--results-dir", str(tmp_path), "--name", "asha"]
    proc = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return tmp_path, proc.stdout


def by_learning_rate(exp: Path) -> dict[float, dict[str, str]]:
    with (exp / "leaderboard.csv").open() as f:
        return {float(r["learning_rate"]): r for r in csv.DictReader(f)}


def test_asha_stops_trials_behind_at_a_rung(asha_search: tuple[Path, str]) -> None:
    tmp_path, stdout = asha_search
    kept = (tmp_path / "asha" / "space.yaml").read_text()  # what --resume will run
    assert "with --set tune.scheduler=asha" in kept and "scheduler: asha" in kept
    rows = by_learning_rate(tmp_path / "asha")
    assert rows[3e-3]["stop_reason"] == "completed" and rows[3e-3]["epochs_run"] == "2"
    for weak in (1e-5, 2e-5):  # far behind the first trial at the half-epoch rung
        assert rows[weak]["stop_reason"] == "asha"  # named by the stop log, not guessed from the config
        assert float(rows[weak]["best_val_loss"]) > float(rows[3e-3]["best_val_loss"])
        assert int(rows[weak]["best_step"]) < 44  # never reached the end of epoch 2
        # and the user was told, as it happened, which trial ASHA stopped
        assert re.search(rf"trial {rows[weak]['trial_id']} stopped at epoch \d/2 by ASHA", stdout)
    assert f"trial {rows[3e-3]['trial_id']} stopped" not in stdout
    summary = (tmp_path / "asha" / "summary.md").read_text()
    saved = next(line for line in summary.splitlines() if line.startswith("| saved by stopping early"))
    assert not saved.startswith("| saved by stopping early | 0.00")


def test_asha_decides_after_a_killed_driver_resumes_as_without_the_kill(
    asha_search: tuple[Path, str], tmp_path: Path
) -> None:
    """The driver is killed after the first (good) trial; on --resume the weak trials meet the
    rungs that trial recorded (Ray 2.60 restores no scheduler state: stopping.RecordedASHA keeps
    them), so ASHA stops them where the uninterrupted search did."""
    command = [*COMMAND, "--set", "tune.scheduler=asha", "--results-dir", str(tmp_path), "--name", "asha"]
    log = tmp_path / "killed.log"  # a file, not a pipe: Ray's daemons outlive the driver and hold its pipes
    with log.open("w") as out:
        killed = subprocess.run(
            command,
            cwd=REPO,
            env=subprocess_env() | {"GPT4ALL_RAY_FAULT": "driver:trials=1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=SEARCH_TIMEOUT_S,
            start_new_session=True,  # the driver kills its process group (its local Ray), not pytest
        )
    subprocess.run([ray_bin(), "stop", "--force"], env=subprocess_env(), capture_output=True, timeout=120)
    assert killed.returncode == -9, log.read_text()[-3000:]
    assert "killed the driver after 1 completed trials" in log.read_text()
    resume = [sys.executable, "-m", "gpt4all_ray.tune", "--resume", "asha", "--results-dir", str(tmp_path)]
    proc = subprocess.run(
        resume, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    want, got = by_learning_rate(asha_search[0] / "asha"), by_learning_rate(tmp_path / "asha")
    assert sorted(got) == sorted(want)
    for lr, row in want.items():
        decided = ("stop_reason", "epochs_run", "best_step", "best_val_loss")
        assert {k: got[lr][k] for k in decided} == {k: row[k] for k in decided}, lr
    assert [r["stop_reason"] for r in got.values()].count("asha") == 2
