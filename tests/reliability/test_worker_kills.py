"""Twenty worker kills in one run: a random rank SIGKILLed at a random step, twenty times, each
time resumed (as Ray Train resumes a restarted group) from the newest checkpoint. The run
completes with every step done, no epoch counter reset, and no fault costing more than one
checkpoint interval of work. Without Ray (the torchrun seam), so the twenty restarts take about
as long as the training; test_worker_restart.py covers the same resume under Ray Train."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from gpt4all_ray.inspection.evaluate import validation_loss
from tests.conftest import Record
from tests.integration.conftest import SEARCH_TIMEOUT_S, launch_ranks
from tests.reliability.accounting import count_worker_trial

pytestmark = [pytest.mark.integration, pytest.mark.long]

KILLS = 20
INTERVAL = 5  # eval_every_steps: a checkpoint every 5 optimizer steps
# Divergence stopping off: the run must reach its last step whatever its loss does in epoch 5.
CASE = {
    "data_rows": 400,
    "val_fraction": 0.1,
    "epochs": 5,
    "eval_every_steps": INTERVAL,
    "learning_rate": 3e-3,
    "stop_on_divergence": False,
}
STEPS_PER_EPOCH = 21  # 339 training rows // global batch 16


def newest_checkpoint(out: Path) -> tuple[int, Path | None]:
    folders = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return (int(folders[-1].name.split("-")[1]), folders[-1]) if folders else (0, None)


def attempt(out: Path, env: dict[str, str], resume_from: Path | None, case: dict | None = None) -> list[int]:
    """One 2-rank attempt of the run in `out`; the ranks' exit codes (-9: SIGKILLed)."""
    procs = launch_ranks(out.parent, {out.name: case or CASE}, world=2, env=env, resume_from=resume_from)
    deadline = time.time() + SEARCH_TIMEOUT_S
    while all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # the survivor blocks in a collective on its dead peer: stopped, as Ray Train would
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=60)
    return [p.returncode for p in procs]


def test_twenty_random_worker_kills_lose_at_most_one_interval_each(tmp_path: Path, ledger: Record) -> None:
    rng = random.Random(2026)
    out = tmp_path / "trial"
    total_steps = CASE["epochs"] * STEPS_PER_EPOCH
    kill_steps = sorted(rng.sample(range(2, total_steps - 1), KILLS))
    resumed_from, lost = None, []
    for kill_step in kill_steps:
        rank = rng.randrange(2)
        start, resume_dir = newest_checkpoint(out)
        env = {"GPT4ALL_RAY_FAULT": f"kill:rank={rank}:step={kill_step}"}
        if kill_step <= start:  # an earlier fault already cost these steps; kill past the resume point
            env["GPT4ALL_RAY_FAULT"] = f"kill:rank={rank}:step={start + 1}"
            kill_step = start + 1
        codes = attempt(out, env, resume_dir)
        assert -9 in codes, f"no rank died at step {kill_step}: {codes}"
        reached, _ = newest_checkpoint(out)
        lost.append(kill_step - reached)  # steps done after the newest checkpoint: redone on resume
        resumed_from = resume_dir
    _, resume_dir = newest_checkpoint(out)
    codes = attempt(out, {}, resume_dir)
    assert codes == [0, 0], codes
    assert resumed_from is not None

    reports = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = reports[-1]
    assert final["stop_reason"] == "completed" and final["step"] == total_steps and final["epoch"] == CASE["epochs"]
    assert [r["step"] for r in reports if r["epoch_end"]][:1] == [STEPS_PER_EPOCH]
    epochs_seen = [r["epoch"] for r in reports]
    assert epochs_seen == sorted(epochs_seen)  # no epoch counter reset across 20 resumes
    assert max(lost) <= INTERVAL, lost  # killed before a due evaluation: that interval is redone
    assert final["resumed_from_step"] > 0  # the last attempt resumed; nothing restarted from scratch
    best = min(reports, key=lambda r: r["val_loss"])
    assert validation_loss(out / "model") == pytest.approx(best["val_loss"], rel=1e-4)
    print(f"{KILLS} kills at steps {kill_steps}; steps redone per kill: {lost}")
    ledger(faults=KILLS, kind="random rank SIGKILL at random steps, resumed each time", trials=count_worker_trial(out))
