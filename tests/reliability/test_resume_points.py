"""Resume equivalence at three kill points, for three seeds: a rank SIGKILLed mid-epoch, at an
epoch boundary (after the epoch's last step, before its checkpoint) and mid gradient accumulation
(after the first of two micro-batches of epoch 2's first step, before the optimizer update, so
that attempt resumes from the epoch-end checkpoint). Each kill is resumed, as Ray Train resumes a restarted
group, from the newest checkpoint. Every step the run takes, first or redone, must see the same
examples and loss as an uninterrupted run of the same seed; the reports after each resume must
match it; no epoch counter goes back.

Tolerance: relative 1e-6 on per-step and validation losses (the same arithmetic in the same
order on CPU; the margin covers summation order in gloo's all-reduce).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Record
from tests.integration.conftest import run_worker_cases
from tests.reliability.accounting import count_worker_trial
from tests.reliability.test_worker_kills import attempt, newest_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.long]

RUNS = [(0, 2), (1, 2), (2, 2), (0, 0)]
"""(seed, ZeRO stage): three seeds at ZeRO-2 (partitioned optimizer state in the checkpoint), and the
shipped default ZeRO-0."""
TOLERANCE = 1e-6
INTERVAL = 5  # eval_every_steps (12 steps an epoch: the epoch end falls between two intervals)
CASE = {
    "data_rows": 240,
    "val_fraction": 0.1,
    "epochs": 2,
    "method": "lora",
    "lora_dropout": 0.1,  # dropout draws random numbers: a resume must restore every rank's RNG
    "per_device_batch": 4,
    "global_batch": 16,  # 2 ranks x 4 rows x accumulation 2
    "learning_rate": 3e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 3,
    "eval_every_steps": INTERVAL,
    "log_every_steps": 3,
    "stop_on_divergence": False,
}


def step_records(out: Path, rank: int) -> list[dict]:
    """Every step this rank finished, in order, redone steps included."""
    return [json.loads(line) for line in (out / f"steps_rank{rank}.jsonl").read_text().splitlines()]


def reports(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 2-rank run per (seed, stage), all in one launch (imports paid once)."""
    root = tmp_path_factory.mktemp("whole")
    run_worker_cases(root, {f"seed{s}-zero{z}": CASE | {"seed": s, "zero_stage": z} for s, z in RUNS}, world=2)
    return root


@pytest.mark.parametrize(("seed", "zero_stage"), RUNS)
def test_kills_mid_epoch_at_an_epoch_boundary_and_mid_accumulation_resume_exactly(
    seed: int, zero_stage: int, uninterrupted: Path, tmp_path: Path, ledger: Record
) -> None:
    whole = uninterrupted / f"seed{seed}-zero{zero_stage}"
    expected_reports = reports(whole)
    per_epoch = next(r["step"] for r in expected_reports if r["epoch_end"])
    assert per_epoch % INTERVAL != 0  # the epoch's last step is not also an interval checkpoint
    kills = {
        "mid-epoch": (1, f"step={INTERVAL + 2}"),
        "epoch boundary": (0, f"step={per_epoch}"),  # after the epoch's last step, before its evaluation
        "mid-accumulation": (1, f"step={per_epoch + 1}:micro=1"),  # inside the step, before its update
    }
    out = tmp_path / f"seed{seed}"
    case = CASE | {"seed": seed, "zero_stage": zero_stage}
    resumed_from = []
    for name, (rank, where) in kills.items():
        start, resume_dir = newest_checkpoint(out)
        resumed_from.append(start)
        codes = attempt(out, {"GPT4ALL_RAY_FAULT": f"kill:rank={rank}:{where}"}, resume_dir, case)
        assert codes[rank] == -9, f"{name}: rank {rank} was not killed: {codes}"
    start, resume_dir = newest_checkpoint(out)
    resumed_from.append(start)
    assert attempt(out, {}, resume_dir, case) == [0, 0]
    # Where each attempt started: from scratch, the interval checkpoint before the mid-epoch kill,
    # the last interval checkpoint of epoch 1 (the boundary kill came before the epoch-end one),
    # then the epoch-end checkpoint (the mid-accumulation kill came in the step right after it).
    last_interval = per_epoch // INTERVAL * INTERVAL
    assert resumed_from == [0, INTERVAL, last_interval, per_epoch]

    for rank in (0, 1):
        want = {r["step"]: r for r in step_records(whole, rank)}
        got = step_records(out, rank)
        assert {r["step"] for r in got} == set(want)  # every step done, none skipped
        for record in got:  # first runs and redone steps alike
            expected = want[record["step"]]
            assert record["examples"] == expected["examples"], f"rank {rank} step {record['step']}"
            assert record["loss"] == pytest.approx(expected["loss"], rel=TOLERANCE), f"rank {rank} {record}"
        # Done again: what followed the checkpoint each kill resumed from. The step that the
        # mid-accumulation kill interrupted never finished, so it was done once, after the resume.
        assert len(got) - len(want) == 2 + (per_epoch - last_interval), [r["step"] for r in got]
        assert [r["step"] for r in got].count(per_epoch + 1) == 1

    got_reports = reports(out)
    epochs = [r["epoch"] for r in got_reports]
    assert epochs == sorted(epochs)  # no epoch counter reset
    by_step = {r["step"]: r for r in got_reports}
    assert sorted(by_step) == [r["step"] for r in expected_reports]
    for want_report in expected_reports:
        report = by_step[want_report["step"]]
        assert (report["epoch"], report["epoch_end"]) == (want_report["epoch"], want_report["epoch_end"])
        assert report["val_loss"] == pytest.approx(want_report["val_loss"], rel=TOLERANCE)
        assert report["train_loss"] == pytest.approx(want_report["train_loss"], rel=TOLERANCE)
        assert report["best_step"] == want_report["best_step"]
    assert got_reports[-1]["stop_reason"] == "completed" and got_reports[-1]["resumed_from_step"] == per_epoch
    ledger(
        faults=len(kills),
        kind=f"seed {seed}, ZeRO-{zero_stage}: SIGKILL mid-epoch, at an epoch boundary, mid accumulation; "
        "resumed exactly",
        trials=count_worker_trial(out),
    )
