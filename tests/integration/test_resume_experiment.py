"""The experiment's driver killed mid-search, then `--resume`: Tune restores its trials, searcher
and stopper, and the experiment ends with the requested number of trials, none evaluated twice."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Record
from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, SMALL_SPACE, ray_bin, subprocess_env

pytestmark = pytest.mark.integration

REQUESTED = 3  # tests/integration/small_space.yaml


def test_killed_driver_resumes_to_the_requested_trials_none_twice(tmp_path: Path, ledger: Record) -> None:
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--space", SMALL_SPACE, "--results-dir", str(tmp_path)]
    driver = subprocess.Popen(
        [*command, "--name", "killed"],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the local Ray it started dies with it
    )
    seen = []
    for line in driver.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if sum("started:" in s for s in seen) == 2:  # the first trial is done, the second running
            break
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    subprocess.run([ray_bin(), "stop", "--force"], env=subprocess_env(), capture_output=True, timeout=120)
    assert sum("started:" in s for s in seen) == 2, "".join(seen)[-3000:]
    assert not (tmp_path / "killed" / "leaderboard.csv").exists()  # it really died before the end

    again = subprocess.run(
        [*command, "--name", "killed"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and "--resume killed" in again.stderr  # never overwritten silently

    resumed = subprocess.run(
        [*command, "--resume", "killed"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_S,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-5000:]
    with (tmp_path / "killed" / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == REQUESTED
    assert len({r["trial_id"] for r in rows}) == REQUESTED
    configs = {
        tuple(r[k] for k in ("learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "epochs")) for r in rows
    }
    assert len(configs) == REQUESTED  # no configuration evaluated twice
    assert all(r["stop_reason"] in ("completed", "diverged") for r in rows)

    import optuna

    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'killed' / 'optuna.db'}")
    told = [t.user_attrs.get("ray_trial_id") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(told) == sorted(r["trial_id"] for r in rows)  # the searcher was told each trial once
    assert (tmp_path / "killed" / "summary.md").is_file()
    ledger(faults=1, kind="driver SIGKILL mid-search, --resume", trials_requested=REQUESTED, trials_lost=0)
    ledger(bad_inputs=1, case="same experiment name after a crash")
