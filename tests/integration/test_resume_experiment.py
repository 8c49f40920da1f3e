"""The experiment's driver killed, then `--resume`: Tune restores its trials, searcher and stopper,
and the experiment ends with the requested number of trials, none evaluated twice. One
experiment, killed three times and resumed after each: before any trial finishes
(GPT4ALL_RAY_FAULT=driver:results=1: the driver SIGKILLs its process group after the first
trial's first evaluation), mid-search (the test SIGKILLs the resumed driver's group once a second
trial reported an evaluation) and after the last trial (driver:trials=3 on the next resume:
before the driver writes its reports). A resume of a resumed experiment is what a cluster that
loses its head node twice needs; one experiment for the three also keeps the suite's time.

It ends with the battery's accounting: the requested trials all in the leaderboard, distinct,
each told to Optuna once; each trial's best checkpoint exists and reloads to its recorded
validation loss; no trial restarted from scratch: each trial a resume ran again went on from a
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

from gpt4all_ray.config import load_spec
from gpt4all_ray.experiment.files import stored_trials
from gpt4all_ray.inspection.evaluate import validation_loss
from gpt4all_ray.train.checkpoint import check_resumable, saved_step
from tests.conftest import Record
from tests.integration.conftest import REPO, SMALL_SPACE, ray_bin, run_search, subprocess_env
from tests.reliability.accounting import count_search

pytestmark = pytest.mark.integration

REQUESTED = 3  # tests/integration/small_space.yaml
PARAMS = ("learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "epochs")
STARTED = re.compile(r"trial ([0-9a-f]+) started:")
EVALUATED = re.compile(r"trial ([0-9a-f]+) epoch (\d+)/\d+(?: step (\d+))?:")
RESUMED = re.compile(r"resumed at epoch \d+, step (\d+) from \S*/train/([0-9a-f]+)/checkpoint_")
KILLED = "GPT4ALL_RAY_FAULT: killed the driver"


def command(results: Path, resume: bool = False) -> list[str]:
    """A new search of the small space, or (resume) the command that continues one: --resume runs
    the experiment's own space and refuses --space."""
    space = [] if resume else ["--space", SMALL_SPACE]
    return [sys.executable, "-m", "gpt4all_ray.tune", *space, "--results-dir", str(results)]


def killed_search(
    results: Path, name: str, until: Callable[[list[str]], bool], fault: str | None = None, resume: bool = False
) -> str:
    """Run the search until `until(lines so far)`, then SIGKILL its process group (a driver
    fault has done that itself by then), stop what is left of Ray; the driver's whole output."""
    driver = subprocess.Popen(
        [*command(results, resume), "--resume" if resume else "--name", name],
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


def resume_started(output: str, reported: dict[str, int], checkpointed: dict[str, int]) -> dict[str, int]:
    """{trial: step it resumed from} in a resumed driver's output, each checked: no trial it ran
    again restarted from scratch, each went on from a checkpoint at or past the last evaluation
    the killed driver reported for it (Ray Train hands over the last checkpoint it registered; a
    newer one whose report died with the driver is redone)."""
    resumed_from = {trial: int(step) for step, trial in RESUMED.findall(output)}
    for trial_id in set(STARTED.findall(output)) & set(reported):
        assert reported[trial_id] <= resumed_from.get(trial_id, 0) <= checkpointed[trial_id], output[-5000:]
    return resumed_from


def account(results: Path, name: str) -> None:
    """The requested trials, distinct, each told to Optuna once; each trial's best checkpoint, as
    the report picks it from the trial's reports, exists and holds the model of its recorded
    validation loss; so does the experiment's best/."""
    exp = results / name
    with (exp / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == REQUESTED
    assert len({r["trial_id"] for r in rows}) == REQUESTED
    assert len({tuple(r[k] for k in PARAMS) for r in rows}) == REQUESTED  # no configuration evaluated twice
    assert all(r["stop_reason"] in ("completed", "diverged") for r in rows), rows
    assert "diverged" in {r["stop_reason"] for r in rows}  # the planted trial, stopped before a kill

    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    told = [t.user_attrs.get("ray_trial_id") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(told) == sorted(r["trial_id"] for r in rows)  # the searcher was told each trial once
    assert (exp / "summary.md").is_file()

    assert count_search(exp).kept == REQUESTED  # each with a best checkpoint that reloads to its loss
    best = json.loads((exp / "best.json").read_text())
    assert Path(best["trial_checkpoint_path"]).is_dir()
    assert math.isclose(validation_loss(exp / "best"), best["best_val_loss"], rel_tol=1e-4)


@pytest.mark.long
def test_a_driver_killed_before_any_trial_finishes_mid_search_and_after_the_last_resumes_each_time(
    tmp_path: Path, ledger: Record
) -> None:
    name = "killed"
    exp = tmp_path / name
    reported: dict[str, int] = {}  # each trial's last evaluation a killed driver printed
    resumes: dict[str, list[int]] = {}  # each trial's resume steps, in order

    def killed(output: str) -> None:
        for trial_id, step in reported_steps(output).items():
            reported[trial_id] = max(step, reported.get(trial_id, 0))

    def resumed(output: str, checkpointed: dict[str, int]) -> dict[str, int]:
        resumed_from = resume_started(output, reported, checkpointed)
        for trial_id, step in resumed_from.items():
            resumes.setdefault(trial_id, []).append(step)
        return resumed_from

    # 1. Before any trial finishes: one evaluation, then the driver kills itself.
    output = killed_search(tmp_path, name, lambda seen: KILLED in seen[-1], fault="driver:results=1")
    assert f"{KILLED} after 1 trial results" in output
    (first,) = STARTED.findall(output)
    assert [t for t, _, _ in EVALUATED.findall(output)] == [first]
    killed(output)

    again = subprocess.run(
        [*command(tmp_path), "--name", name],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and f"--resume {name}" in again.stderr  # never overwritten silently

    # 2. Mid-search: the resumed driver killed once a second trial reported an evaluation.
    def second_trial_evaluated(seen: list[str]) -> bool:
        started = list(dict.fromkeys(STARTED.findall("".join(seen))))
        return len(started) == 2 and any(t == started[1] for t, _, _ in EVALUATED.findall(seen[-1]))

    checkpointed = newest_checkpoints(exp)
    output = killed_search(tmp_path, name, second_trial_evaluated, resume=True)
    assert resumed(output, checkpointed)[first] > 0  # the running trial went on from its checkpoint
    first_again, second = dict.fromkeys(STARTED.findall(output))
    assert first_again == first
    killed(output)

    # 3. After the last trial, before the driver writes its reports.
    checkpointed = newest_checkpoints(exp)
    last = f"driver:trials={REQUESTED}"
    output = killed_search(tmp_path, name, lambda seen: KILLED in seen[-1], fault=last, resume=True)
    assert f"{KILLED} after {REQUESTED} completed trials" in output
    assert resumed(output, checkpointed)[second] > 0
    killed(output)
    assert len(reported) == REQUESTED

    # 4. The last resume: a trial Tune had not recorded as finished runs again from its last
    # checkpoint, trains no further and reports its last evaluation again (trial.py), not a
    # result without metrics.
    checkpointed = newest_checkpoints(exp)
    output = run_search(command(tmp_path, resume=True) + ["--resume", name], space=None)
    for trial_id, step in resumed(output, checkpointed).items():
        assert step == reported[trial_id], (trial_id, step, reported)

    account(tmp_path, name)
    # Nothing a killed driver was told is lost: each trial's stored history (durable_reports.py:
    # Tune's result.json of a restored trial starts anew) holds every last evaluation a killed
    # driver printed for it and nothing past its last; each report after a resume carries the
    # step it resumed from.
    history = {t.trial_id: t.history for t in stored_trials(exp)}
    for trial_id, step in reported.items():
        steps = {h["step"] for h in history[trial_id]}
        assert step in steps and max(steps) == step, (trial_id, history[trial_id])
    for trial_id, steps in resumes.items():
        for h in history[trial_id]:
            if h["step"] > steps[0] and h["step"] not in steps:
                assert h["resumed_from_step"] == max(s for s in steps if s < h["step"]), history[trial_id]
    ledger(
        faults=3,
        kind="driver SIGKILL before any trial finishes, mid-search and after the last trial; --resume after each",
        trials=count_search(exp),
    )
    ledger(bad_inputs=1, case="same experiment name after a crash")
