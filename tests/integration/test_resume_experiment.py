"""The experiment's driver killed, then `--resume`: Tune restores its trials, searcher and stopper,
and the experiment ends with the requested number of trials, none evaluated twice. Three kill
points: before any trial finishes (GPT4ALL_RAY_FAULT=driver:results=1: the driver SIGKILLs its
process group after the first trial's first evaluation), mid-search (the test SIGKILLs the
driver's group once the second trial reported an evaluation) and after the last trial
(driver:trials=3: before the driver writes its reports).

Each ends with the battery's accounting: the requested trials all in the leaderboard, distinct,
each told to Optuna once; each trial's best checkpoint exists and reloads to its recorded
validation loss; no trial restarted from scratch: a trial the resume ran again went on from a
checkpoint at or past the last evaluation the killed driver had reported for it."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gpt4all_ray.checkpoint import check_resumable, saved_step
from gpt4all_ray.config import load_spec
from gpt4all_ray.evaluate import validation_loss
from gpt4all_ray.experiment import stored_trials
from gpt4all_ray.results import record_from_history
from tests.conftest import Record
from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, SMALL_SPACE, ray_bin, subprocess_env

pytestmark = pytest.mark.integration

REQUESTED = 3  # tests/integration/small_space.yaml
PARAMS = ("learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "epochs")
STARTED = re.compile(r"trial ([0-9a-f]+) started:")
EVALUATED = re.compile(r"trial ([0-9a-f]+) epoch (\d+)/\d+(?: step (\d+))?:")
RESUMED = re.compile(r"resumed at epoch \d+, step (\d+) from \S*/train/([0-9a-f]+)/checkpoint_")
KILLED = "GPT4ALL_RAY_FAULT: killed the driver"


def command(results: Path) -> list[str]:
    return [sys.executable, "-m", "gpt4all_ray.tune", "--space", SMALL_SPACE, "--results-dir", str(results)]


def killed_search(results: Path, name: str, until: Callable[[list[str]], bool], fault: str | None = None) -> str:
    """Run the search until `until(lines so far)`, then SIGKILL its process group (a driver
    fault has done that itself by then), stop what is left of Ray; the driver's whole output."""
    driver = subprocess.Popen(
        [*command(results), "--name", name],
        cwd=REPO,
        env=subprocess_env() | ({"GPT4ALL_RAY_FAULT": fault} if fault else {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the local Ray it started dies with it
    )
    assert driver.stdout is not None
    seen: list[str] = []
    for line in driver.stdout:
        seen.append(line)
        if until(seen):
            break
    if not fault:
        os.killpg(driver.pid, signal.SIGKILL)
    returncode = driver.wait(timeout=120)
    # Ray's daemons and the trials' workers are not all in the driver's group: they outlive it
    # (and may go on training) until this.
    subprocess.run([ray_bin(), "stop", "--force"], env=subprocess_env(), capture_output=True, timeout=120)
    output = "".join(seen) + driver.stdout.read()
    assert returncode == -signal.SIGKILL, output[-3000:]
    assert not (results / name / "leaderboard.csv").exists(), output[-3000:]  # it died before the end
    return output


def reported_steps(output: str) -> dict[str, int]:
    """Each trial's last evaluation step in the killed driver's progress lines."""
    train_rows = int(re.findall(r"(\d+) train / \d+ validation", output)[0])
    per_epoch = train_rows // load_spec(REPO / SMALL_SPACE).fixed.global_batch
    return {trial: int(step) if step else int(epoch) * per_epoch for trial, epoch, step in EVALUATED.findall(output)}


def newest_checkpoints(exp: Path) -> dict[str, int]:
    """Each trial's newest complete checkpoint, as the killed experiment left them."""
    newest = {}
    for run in (exp / "ray" / "train").iterdir():
        steps = [s for c in run.glob("checkpoint_*") if check_resumable(c) is None and (s := saved_step(c))]
        if steps:
            newest[run.name] = max(steps)
    return newest


def resume(results: Path, name: str) -> str:
    resumed = subprocess.run(
        [*command(results), "--resume", name],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_S,
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-5000:]
    return output


def resume_and_account(results: Path, name: str, killed_output: str) -> dict[str, int]:
    """Resume the killed experiment, then the battery's accounting; {trial: step it resumed from}."""
    exp = results / name
    reported, checkpointed = reported_steps(killed_output), newest_checkpoints(exp)
    output = resume(results, name)
    with (exp / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == REQUESTED
    assert len({r["trial_id"] for r in rows}) == REQUESTED
    assert len({tuple(r[k] for k in PARAMS) for r in rows}) == REQUESTED  # no configuration evaluated twice
    assert all(r["stop_reason"] in ("completed", "diverged") for r in rows), rows

    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    told = [t.user_attrs.get("ray_trial_id") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(told) == sorted(r["trial_id"] for r in rows)  # the searcher was told each trial once
    assert (exp / "summary.md").is_file()

    # Each trial's best checkpoint, as the report picks it from the trial's reports, exists and
    # holds the model of its recorded validation loss; so does the experiment's best/.
    trials = stored_trials(exp)
    for trial in trials:
        record = record_from_history(trial.trial_id, trial.params, trial.history, trial.error)
        assert record.checkpoint_path and Path(record.checkpoint_path).is_dir(), (trial.trial_id, trial.history)
        assert math.isclose(validation_loss(Path(record.checkpoint_path)), record.best_val_loss, rel_tol=1e-4)
    best = json.loads((exp / "best.json").read_text())
    assert Path(best["trial_checkpoint_path"]).is_dir()
    assert math.isclose(validation_loss(exp / "best"), best["best_val_loss"], rel_tol=1e-4)

    # No trial restarted from scratch: one the resume ran again went on from a checkpoint at or
    # past the last evaluation the killed driver reported for it (Ray Train hands over the last
    # checkpoint it registered; a newer one whose report died with the driver is redone), and
    # every report it made after that carries the step it resumed from.
    resumed_from = {trial: int(step) for step, trial in RESUMED.findall(output)}
    history = {t.trial_id: t.history for t in trials}
    for trial_id in set(STARTED.findall(output)):
        if trial_id in reported:
            assert reported[trial_id] <= resumed_from.get(trial_id, 0) <= checkpointed[trial_id], output[-5000:]
    # Nothing the killed driver was told is lost: each trial's stored history (durable_reports.py:
    # Tune's result.json of a restored trial starts anew) still holds the last evaluation the
    # driver printed for it.
    for trial_id, step in reported.items():
        assert step in {h["step"] for h in history[trial_id]}, (trial_id, history[trial_id])
    for trial_id, step in resumed_from.items():
        later = [h for h in history[trial_id] if h["step"] > step]
        assert all(h["resumed_from_step"] == step for h in later), history[trial_id]
    return resumed_from


def test_driver_killed_mid_search_resumes_to_the_requested_trials_none_twice(tmp_path: Path, ledger: Record) -> None:
    def second_trial_evaluated(seen: list[str]) -> bool:
        started = STARTED.findall("".join(seen))
        return len(started) == 2 and any(t == started[1] for t, _, _ in EVALUATED.findall(seen[-1]))

    output = killed_search(tmp_path, "killed", second_trial_evaluated)
    _, second = STARTED.findall(output)  # the first trial is done, the second running

    again = subprocess.run(
        [*command(tmp_path), "--name", "killed"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "--resume killed" in again.stderr  # never overwritten silently

    resumed_from = resume_and_account(tmp_path, "killed", output)
    assert resumed_from.get(second, 0) > 0  # the running trial went on from its checkpoint
    ledger(faults=1, kind="driver SIGKILL mid-search, --resume", trials_requested=REQUESTED, trials_lost=0)
    ledger(bad_inputs=1, case="same experiment name after a crash")


@pytest.mark.long
def test_driver_killed_before_any_trial_finishes_resumes_the_running_trial(tmp_path: Path, ledger: Record) -> None:
    output = killed_search(tmp_path, "early", lambda seen: KILLED in seen[-1], fault="driver:results=1")
    assert f"{KILLED} after 1 trial results" in output
    (first,) = STARTED.findall(output)
    assert [t for t, _, _ in EVALUATED.findall(output)] == [first]  # one evaluation, then the kill

    resumed_from = resume_and_account(tmp_path, "early", output)
    assert resumed_from[first] > 0
    # Its report from before the kill is kept (durable_reports.py), not only those made after it.
    (trial,) = (t for t in stored_trials(tmp_path / "early") if t.trial_id == first)
    assert min(h["step"] for h in trial.history) <= reported_steps(output)[first], trial.history
    ledger(faults=1, kind="driver SIGKILL before any trial finishes, --resume", trials_requested=3, trials_lost=0)


@pytest.mark.long
def test_driver_killed_after_the_last_trial_resumes_to_its_reports(tmp_path: Path, ledger: Record) -> None:
    output = killed_search(tmp_path, "late", lambda seen: KILLED in seen[-1], fault=f"driver:trials={REQUESTED}")
    assert f"{KILLED} after {REQUESTED} completed trials" in output
    assert len(set(STARTED.findall(output))) == REQUESTED

    resumed_from = resume_and_account(tmp_path, "late", output)
    # A trial Tune had not recorded as finished ran again from its last checkpoint, trained no
    # further and reported its last evaluation again (trial.py), not a result without metrics: no
    # report past it, and its earlier reports kept.
    final = reported_steps(output)
    for trial in stored_trials(tmp_path / "late"):
        assert max(h["step"] for h in trial.history) == final[trial.trial_id]
        assert resumed_from.get(trial.trial_id, final[trial.trial_id]) == final[trial.trial_id]
    ledger(faults=1, kind="driver SIGKILL after the last trial, --resume", trials_requested=3, trials_lost=0)
