"""A worker process killed (SIGKILL) during a real Ray Train run: Ray Train restarts the worker
group, the workers resume from the last reported checkpoint, and the trial finishes as if
uninterrupted: no evaluation reported twice, no epoch counter reset, TensorBoard without the dead
attempt's extra steps."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all_ray.inspection.evaluate import validation_loss
from tests.conftest import Record
from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, subprocess_env
from tests.reliability.accounting import count_search

pytestmark = pytest.mark.integration

KILL_AFTER_STEP = 12  # epoch 1 (22 steps an epoch), 2 steps past the evaluation at step 10


def test_killed_worker_resumes_from_its_checkpoint_and_the_trial_finishes(tmp_path: Path, ledger: Record) -> None:
    marker = tmp_path / "fired"
    env = subprocess_env() | {
        "GPT4ALL_RAY_FAULT": f"kill:rank=1:step={KILL_AFTER_STEP}",
        "GPT4ALL_RAY_FAULT_ONCE": str(marker),
    }
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--space", "tests/integration/restart_space.yaml"]
    command += ["--results-dir", str(tmp_path), "--name", "restart"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert marker.read_text().startswith(f"killed rank 1 after step {KILL_AFTER_STEP}")

    exp = tmp_path / "restart"
    with (exp / "leaderboard.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["stop_reason"], row["epochs_run"], row["restarts"]) == ("completed", "2", "1")
    # The restarted workers mapped the experiment's one build of the data instead of tokenizing again.
    assert len((exp / "data_cache" / "builds.jsonl").read_text().splitlines()) == 1

    (result_file,) = (exp / "ray" / "tune").glob("*/result.json")
    results = [json.loads(line) for line in result_file.read_text().splitlines()]
    steps = [r["step"] for r in results]
    assert steps == sorted(set(steps)) and steps[0] == 5  # each evaluation reported once, in order
    # Resumed from the last checkpoint Ray Train registered before the failure. That can be one
    # evaluation older than the last the dead attempt made (Ray polls workers for their reports,
    # and a report still queued in a dead group is dropped), never newer, and never from scratch.
    before = [r["step"] for r in results if r["resumed_from_step"] == 0]
    after = [r for r in results if r["resumed_from_step"]]
    assert before and after and before[-1] < KILL_AFTER_STEP
    assert {r["resumed_from_step"] for r in after} == {before[-1]} and before[-1] >= KILL_AFTER_STEP - 2 * 5
    assert [r["epoch"] for r in results if r["epoch_end"]] == [1, 2]
    # Phase seconds count both attempts, as train_s does: the resumed one set up again and loaded
    # the checkpoint, on top of what the checkpoint held.
    last_before = next(r for r in results if r["step"] == before[-1])
    assert last_before["resume_s"] == 0 < after[0]["resume_s"]
    assert after[0]["setup_engine_s"] > last_before["setup_engine_s"] > 0
    assert after[0]["evaluate_s"] > last_before["evaluate_s"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb,) = (exp / "tensorboard").iterdir()
    events = EventAccumulator(str(tb))
    events.Reload()
    logged = [e.step for e in events.Scalars("train/loss")]
    assert logged == list(range(1, steps[-1] + 1))  # the dead attempt's later steps purged, then rerun

    best = json.loads((exp / "best.json").read_text())
    assert validation_loss(exp / "best") == pytest.approx(best["best_val_loss"], rel=1e-4)
    ledger(faults=1, kind="Ray Train worker SIGKILL, group restarted", trials=count_search(exp))
