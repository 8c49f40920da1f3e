"""Numerics faults through the real DeepSpeed engine (GPT4ALL_RAY_FAULT=nan:step=S[:steps=N],
inf:... or spike:..., multiplying the training loss): DeepSpeed skips a step whose gradients are not finite,
and the worker counts it; one such step costs nothing, while a trial that skipped every step
since its last evaluation stops with reason non_finite. The best checkpoint is always a finite
one, and the searcher gets its finite value (a trial with no finite loss at all is a failure for
Optuna: tests/unit/test_searcher.py)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from gpt4all_ray.inspection.evaluate import validation_loss
from tests.conftest import Record
from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, launch_ranks, subprocess_env
from tests.reliability.accounting import count_search, count_worker_trial

pytestmark = pytest.mark.integration
SPACE = "tests/integration/restart_space.yaml"  # 2 workers, 22 steps an epoch, evaluation every 5
CASE = {"data_rows": 400, "val_fraction": 0.1, "epochs": 2, "eval_every_steps": 5, "learning_rate": 3e-3}


def run_ranks(out: Path, fault: str, zero_stage: int = 2) -> list[dict]:
    procs = launch_ranks(out, {"trial": CASE | {"zero_stage": zero_stage}}, world=2, env={"GPT4ALL_RAY_FAULT": fault})
    for proc in procs:
        output, _ = proc.communicate(timeout=SEARCH_TIMEOUT_S)
        assert proc.returncode == 0, output[-3000:]
    assert not (out / "trial" / "error.txt").exists(), (out / "trial" / "error.txt").read_text()[-3000:]
    return [json.loads(line) for line in (out / "trial" / "metrics.jsonl").read_text().splitlines()]


# ZeRO-0 (the default): DeepSpeed steps torch's AdamW unchecked and the loop refuses the step;
# ZeRO-2: DeepSpeed's own overflow check skips it. "nan:rank=1": one rank's loss alone.
@pytest.mark.parametrize(("fault", "zero_stage"), [("nan", 0), ("inf", 0), ("nan:rank=1", 0), ("nan", 2), ("inf", 2)])
def test_one_non_finite_step_is_skipped_counted_and_the_trial_goes_on(
    fault: str, zero_stage: int, tmp_path: Path, ledger: Record
) -> None:
    kind, _, rank = fault.partition(":")
    reports = run_ranks(tmp_path, f"{kind}:step=12" + (f":{rank}" if rank else ""), zero_stage)
    assert [r["skipped_steps"] for r in reports if r["step"] < 12] == [0, 0]
    assert all(r["skipped_steps"] == 1 for r in reports if r["step"] >= 12)
    assert all(math.isfinite(r["val_loss"]) for r in reports) and reports[-1]["stop_reason"] == "completed"
    best = min(reports, key=lambda r: r["val_loss"])
    assert validation_loss(tmp_path / "trial" / "model") == pytest.approx(best["val_loss"], rel=1e-4)
    ledger(
        faults=1,
        kind=f"{fault} loss at one step, worker loop, ZeRO-{zero_stage}",
        trials=count_worker_trial(tmp_path / "trial"),
    )


def test_a_tenfold_loss_spike_shows_in_the_train_loss_and_never_reaches_the_best(
    tmp_path: Path, ledger: Record
) -> None:
    """A finite spike (a bad batch): the step is taken (not skipped), the spiked window's train
    loss shows it, validation loss alone decides the stop and the best, all finite."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reports = run_ranks(tmp_path, "spike:step=12:factor=10")
    events = EventAccumulator(str(tmp_path / "trial" / "tb"))
    events.Reload()
    windows = {e.step: e.value for e in events.Scalars("train/loss")}
    spiked = min(step for step in windows if step >= 12)  # the log window that holds step 12
    calm = sorted(v for step, v in windows.items() if step != spiked and step > 5)
    print(f"train loss by window end: {windows}")
    assert windows[spiked] > 3 * calm[len(calm) // 2]  # 10x one step in a window of a few
    assert all(r["skipped_steps"] == 0 for r in reports)  # finite: the optimizer took the step
    assert all(math.isfinite(r["val_loss"]) for r in reports)
    last, best = reports[-1], min(reports, key=lambda r: r["val_loss"])
    assert last["stop_reason"] in ("completed", "diverged") and last["best_val_loss"] == best["val_loss"]
    assert validation_loss(tmp_path / "trial" / "model") == pytest.approx(best["val_loss"], rel=1e-4)
    ledger(
        faults=1,
        kind=f"10x loss spike at one step ({last['stop_reason']}), worker loop",
        trials=count_worker_trial(tmp_path / "trial"),
    )


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_non_finite_loss_at_every_step_stops_the_trial_with_its_reason(
    zero_stage: int, tmp_path: Path, ledger: Record
) -> None:
    reports = run_ranks(tmp_path, "nan:step=12:steps=1000", zero_stage)
    print([(r["step"], r["val_loss"], r["skipped_steps"], r["stop_reason"]) for r in reports])
    last = reports[-1]
    # Steps 12-15 are 4 of the 5 since the evaluation at 10; 16-20 are all 5 of theirs.
    assert (last["step"], last["stop_reason"], last["skipped_steps"]) == (20, "non_finite", 9)
    best = min(reports, key=lambda r: r["val_loss"])
    assert (last["best_val_loss"], last["best_step"]) == (best["val_loss"], best["step"])
    assert validation_loss(tmp_path / "trial" / "model") == pytest.approx(best["val_loss"], rel=1e-4)
    ledger(
        faults=1,
        kind=f"nan loss from step 12 on, worker loop, ZeRO-{zero_stage}",
        trials=count_worker_trial(tmp_path / "trial"),
    )


def test_nan_in_a_real_search_keeps_the_best_checkpoint_and_tells_optuna_a_finite_value(
    tmp_path: Path, ledger: Record
) -> None:
    env = subprocess_env() | {"GPT4ALL_RAY_FAULT": "nan:step=12:steps=1000"}
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--space", SPACE, "--results-dir", str(tmp_path)]
    proc = subprocess.run(
        [*command, "--name", "nan"], cwd=REPO, env=env, capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    exp = tmp_path / "nan"
    with (exp / "leaderboard.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["stop_reason"] == "non_finite" and row["epochs_run"] == "1"
    best = json.loads((exp / "best.json").read_text())
    assert math.isfinite(best["best_val_loss"]) and best["best_step"] in (10, 15, 20)
    # Ray's checkpoint manager kept the best (finite) checkpoint beside the non-finite latest.
    assert validation_loss(exp / "best") == pytest.approx(best["best_val_loss"], rel=1e-4)
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{exp / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(best["best_val_loss"])
    ledger(faults=1, kind="nan loss from step 12 on, real search", trials=count_search(exp))


def test_out_of_memory_fails_its_trial_after_its_restarts_and_the_search_goes_on(
    tmp_path: Path, ledger: Record
) -> None:
    env = subprocess_env() | {"GPT4ALL_RAY_FAULT": "oom:rank=1:step=30"}
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--space", "tests/reliability/oom_space.yaml"]
    proc = subprocess.run(
        [*command, "--results-dir", str(tmp_path), "--name", "oom"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "OutOfMemoryError" in output and "lower per_device_batch" in output  # said, with what to change
    with (tmp_path / "oom" / "leaderboard.csv").open() as f:
        rows = {r["epochs"]: r for r in csv.DictReader(f)}
    assert rows["2"]["stop_reason"] == "error" and rows["1"]["stop_reason"] == "completed"
    # The failed trial's checkpoints stay valid: the best is the lowest loss of either, and reloads.
    best = json.loads((tmp_path / "oom" / "best.json").read_text())
    assert best["best_val_loss"] == pytest.approx(min(float(r["best_val_loss"]) for r in rows.values()))
    assert validation_loss(tmp_path / "oom" / "best") == pytest.approx(best["best_val_loss"], rel=1e-4)
    # 1 + worker_restarts attempts each reached step 30 and ran out of memory there.
    ledger(
        faults=2,
        kind="OutOfMemoryError in rank 1, twice (restart budget 1): that trial ends in error, by design",
        trials=count_search(tmp_path / "oom"),
    )
