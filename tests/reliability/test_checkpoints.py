"""Stale or corrupt checkpoints, through the real worker (two ranks, DeepSpeed ZeRO-2, LoRA with
dropout) on the torchrun seam: the latest checkpoint deleted, one of its engine shards truncated,
or half-written (one rank's files never arrived). Each time the resume falls back to the newest
valid older checkpoint, says so, and finishes exactly as an uninterrupted run; with every
checkpoint broken it fails naming each one, and never starts over from step 0.

Tolerance: relative 1e-6 on validation losses, as in tests/reliability/test_resume_points.py (resuming
from an older valid checkpoint replays the same arithmetic; the margin covers gloo's summation).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Record
from tests.integration.conftest import SEARCH_TIMEOUT_S, launch_ranks, run_worker_cases
from tests.reliability.accounting import count_worker_trial

pytestmark = pytest.mark.integration

INTERVAL = 4
CASE = {
    "data_rows": 240,
    "val_fraction": 0.1,
    "epochs": 1,
    "method": "lora",
    "lora_dropout": 0.1,  # dropout draws random numbers: the fallback must restore every rank's RNG
    "zero_stage": 2,
    "per_device_batch": 4,
    "global_batch": 16,
    "learning_rate": 3e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 3,
    "eval_every_steps": INTERVAL,
    "log_every_steps": 3,
}
TOLERANCE = 1e-6
RANK1_SHARD = "resume/engine/zero_pp_rank_1_mp_rank_00_optim_states.pt"


def reports(out: Path) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def steps_run(out: Path, rank: int) -> list[int]:
    return [json.loads(line)["step"] for line in (out / f"steps_rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run: its checkpoints are what each test damages, its losses the reference."""
    root = tmp_path_factory.mktemp("whole")
    run_worker_cases(root, {"trial": CASE}, world=2)
    return root / "trial"


def checkpoint_steps(checkpoints: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*"))


def resume(out: Path, resume_from: Path) -> str:
    """Both ranks resumed from `resume_from`, as Ray Train resumes a restarted group; rank 0's output."""
    procs = launch_ranks(out.parent, {out.name: CASE}, world=2, resume_from=resume_from)
    outputs = [p.communicate(timeout=SEARCH_TIMEOUT_S)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:]
    return outputs[0]


def deleted(folder: Path) -> None:
    shutil.rmtree(folder)


def shard_truncated(folder: Path) -> None:
    shard = folder / RANK1_SHARD
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def half_written(folder: Path) -> None:
    """Rank 1's part never arrived (its save or its copy died): rank 0's files alone."""
    for name in (RANK1_SHARD, "resume/rng_rank1.pt", "resume/manifest_rank1.json"):
        (folder / name).unlink()


FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "latest checkpoint deleted": (deleted, "the folder does not exist"),
    "engine shard of the latest truncated to half": (shard_truncated, f"{RANK1_SHARD} is "),
    "latest checkpoint half-written (one rank's files missing)": (half_written, "resume/manifest_rank1.json missing"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_broken_latest_checkpoint_falls_back_to_the_newest_valid_one_and_replays_exactly(
    fault: str, whole: Path, tmp_path: Path, ledger: Record
) -> None:
    damage, reason = FAULTS[fault]
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(whole / "checkpoints", checkpoints)
    *_, older, latest = checkpoint_steps(checkpoints)
    assert (older, latest) == (2 * INTERVAL, 3 * INTERVAL)  # at least three checkpoints
    broken = checkpoints / f"step-{latest}"
    damage(broken)

    out = tmp_path / "resumed"
    output = resume(out, broken)

    assert not (out / "error.txt").exists(), (out / "error.txt").read_text()
    fallback = f"checkpoint {broken} is not usable ({reason}"
    said = [line for line in output.splitlines() if line.startswith(fallback)]
    assert said and said[0].endswith(f"resuming from {checkpoints / f'step-{older}'} (step {older}) instead"), output
    for rank in (0, 1):
        assert min(steps_run(out, rank)) == older + 1  # from the older checkpoint, not from step 0
    expected, got = reports(whole), reports(out)
    assert sorted(got) == [s for s in sorted(expected) if s > older]
    for step, report in got.items():
        assert (report["resumed_from_step"], report["resume_fallbacks"]) == (older, 1)
        assert report["val_loss"] == pytest.approx(expected[step]["val_loss"], rel=TOLERANCE), f"step {step}"
    assert got[max(got)]["stop_reason"] == "completed" and max(got) == max(expected)
    ledger(faults=1, kind=f"{fault}: resumed from the newest valid older checkpoint", trials=count_worker_trial(out))


def test_with_every_checkpoint_broken_the_resume_fails_naming_each_and_trains_nothing(
    whole: Path, tmp_path: Path, ledger: Record
) -> None:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(whole / "checkpoints", checkpoints)
    folders = [checkpoints / f"step-{s}" for s in reversed(checkpoint_steps(checkpoints))]
    assert len(folders) == len(FAULTS)
    for folder, (damage, _) in zip(folders, FAULTS.values(), strict=True):  # newest deleted, ...
        damage(folder)
    latest = folders[0]

    out = tmp_path / "resumed"
    resume(out, latest)  # worker_runs.py writes what failed to error.txt and exits 0

    error = (out / "error.txt").read_text()
    assert "NoUsableCheckpoint" in error
    for folder, (_, reason) in zip(folders, FAULTS.values(), strict=True):
        assert f"{folder} ({reason}" in error, error[-2000:]
    assert not list(out.glob("steps_rank*.jsonl")) and not (out / "metrics.jsonl").exists()  # no step 0 restart
    ledger(
        faults=3,
        kind="every checkpoint broken (deleted, truncated, half-written): refused naming each, nothing retrained",
        trials=count_worker_trial(out),  # lost by design: no checkpoint to resume from
    )
