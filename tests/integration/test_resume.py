"""Resume equivalence: two ranks (ZeRO-2, LoRA with dropout, so RNG state matters) are killed in
the middle of epoch 2; resumed from the last checkpoint, the run sees the same examples at every
step and the same losses as a run that was never interrupted.

Tolerance: relative 1e-6 on per-step losses and validation losses (the same arithmetic in the
same order on CPU; the margin only covers summation order in gloo's all-reduce).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Record
from tests.integration.conftest import launch_ranks, run_worker_cases

pytestmark = pytest.mark.integration

CASE = {
    "trial": {
        "data_rows": 400,
        "val_fraction": 0.1,
        "epochs": 2,
        "method": "lora",
        "lora_dropout": 0.1,
        "zero_stage": 2,
        "per_device_batch": 4,
        "global_batch": 16,  # 2 ranks x 4 x accumulation 2: a kill can fall between micro-batches' steps
        "learning_rate": 3e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 4,
        "weight_decay": 0.05,
        "eval_every_steps": 5,
        "log_every_steps": 3,
    }
}
KILL_AFTER_STEP = 33  # epoch 2 (22 steps an epoch), 3 steps past the checkpoint at step 30
TOLERANCE = 1e-6


def steps(folder: Path, rank: int) -> dict[int, dict]:
    lines = (folder / f"steps_rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def reports(folder: Path) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


def kill_and_wait(root: Path, marker: Path) -> None:
    """Rank 1 kills itself after KILL_AFTER_STEP; rank 0 is then stopped as Ray Train would."""
    procs = launch_ranks(
        root,
        CASE,
        world=2,
        env={"GPT4ALL_RAY_FAULT": f"kill:rank=1:step={KILL_AFTER_STEP}", "GPT4ALL_RAY_FAULT_ONCE": str(marker)},
    )
    procs[1].wait(timeout=600)
    assert procs[1].returncode == -signal.SIGKILL, procs[1].stdout.read()[-3000:]  # type: ignore[union-attr]
    time.sleep(2)  # rank 0 blocks in the next collective or fails on the dead peer
    if procs[0].poll() is None:
        procs[0].kill()
    procs[0].wait(timeout=60)


def test_a_run_killed_mid_epoch_resumes_to_the_same_examples_and_losses(tmp_path: Path, ledger: Record) -> None:
    whole, killed, resumed = tmp_path / "whole", tmp_path / "killed", tmp_path / "resumed"
    run_worker_cases(whole, CASE, world=2)
    per_epoch = max(r["step"] for r in reports(whole / "trial").values()) // 2
    assert per_epoch < KILL_AFTER_STEP < 2 * per_epoch  # the kill falls inside epoch 2

    kill_and_wait(killed, tmp_path / "fired")
    assert (tmp_path / "fired").is_file()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (killed / "trial" / "checkpoints").iterdir())
    last = checkpoints[-1]
    assert last == 30 and max(steps(killed / "trial", 1)) == KILL_AFTER_STEP

    run_worker_cases(resumed, CASE, world=2, resume_from=killed / "trial" / "checkpoints" / f"step-{last}")

    for rank in (0, 1):
        expected, got = steps(whole / "trial", rank), steps(resumed / "trial", rank)
        assert min(got) == last + 1 and max(got) == max(expected)  # nothing repeated, nothing skipped
        for step, record in got.items():
            assert record["examples"] == expected[step]["examples"], f"rank {rank} step {step}: other examples"
            assert record["loss"] == pytest.approx(expected[step]["loss"], rel=TOLERANCE), f"rank {rank} step {step}"
    expected_reports, got_reports = reports(whole / "trial"), reports(resumed / "trial")
    assert sorted(got_reports) == [s for s in sorted(expected_reports) if s > last]
    for step, report in got_reports.items():
        want = expected_reports[step]
        assert (report["epoch"], report["epoch_end"]) == (want["epoch"], want["epoch_end"])  # no epoch reset
        assert report["val_loss"] == pytest.approx(want["val_loss"], rel=TOLERANCE)
        assert report["train_loss"] == pytest.approx(want["train_loss"], rel=TOLERANCE)
        assert report["best_step"] == want["best_step"] and report["resumed_from_step"] == last
    assert got_reports[max(got_reports)]["stop_reason"] == "completed"
    ledger(faults=1, kind="worker SIGKILL mid-epoch, resumed without Ray", trials_requested=1, trials_lost=0)
