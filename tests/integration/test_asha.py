"""ASHA on step-level evaluations, for real: trials that fall behind at a rung (half an epoch
here) are stopped by the scheduler, and the report counts the compute that saved."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, subprocess_env

pytestmark = pytest.mark.integration


def test_asha_stops_trials_behind_at_a_rung(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--space", "tests/integration/asha_space.yaml"]
    command += ["--set", "tune.scheduler=asha", "--results-dir", str(tmp_path), "--name", "asha"]
    proc = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    kept = (tmp_path / "asha" / "space.yaml").read_text()  # what --resume will run
    assert "with --set tune.scheduler=asha" in kept and "scheduler: asha" in kept
    with (tmp_path / "asha" / "leaderboard.csv").open() as f:
        rows = {float(r["learning_rate"]): r for r in csv.DictReader(f)}
    assert rows[3e-3]["stop_reason"] == "completed" and rows[3e-3]["epochs_run"] == "2"
    for weak in (1e-5, 2e-5):  # far behind the first trial at the half-epoch rung
        assert rows[weak]["stop_reason"] == "asha"  # named by the stop log, not guessed from the config
        assert float(rows[weak]["best_val_loss"]) > float(rows[3e-3]["best_val_loss"])
        assert int(rows[weak]["best_step"]) < 44  # never reached the end of epoch 2
        # and the user was told, as it happened, which trial ASHA stopped
        assert re.search(rf"trial {rows[weak]['trial_id']} stopped at epoch \d/2 by ASHA", proc.stdout)
    assert f"trial {rows[3e-3]['trial_id']} stopped" not in proc.stdout
    summary = (tmp_path / "asha" / "summary.md").read_text()
    saved = next(line for line in summary.splitlines() if line.startswith("| saved by stopping early"))
    assert not saved.startswith("| saved by stopping early | 0.00")
