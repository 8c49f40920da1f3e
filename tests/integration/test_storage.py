"""`--storage URI`: Ray keeps trial folders and checkpoints in a filesystem that pyarrow opens
from a URI (here file://, the code path that s3://, gs:// and hdfs:// take), away from the
experiment folder; the report reads a mirror of Tune's folders and copies best/ through that
filesystem. (memory:// and an unwritable URI are refused before Ray starts:
tests/reliability/test_bad_inputs.py.)"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all_ray.inspection.evaluate import validation_loss
from tests.conftest import Record
from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, run_search, subprocess_env
from tests.reliability.accounting import count_search

pytestmark = pytest.mark.integration

SPACE = "tests/integration/storage_space.yaml"
REQUESTED = 2


def test_a_search_on_a_pyarrow_uri_storage_keeps_every_trial_and_its_best_checkpoint(
    tmp_path: Path, ledger: Record
) -> None:
    results, store = tmp_path / "results", tmp_path / "store"
    run_search(
        [sys.executable, "-m", "gpt4all_ray.tune", "--results-dir", str(results), "--name", "st"]
        + ["--storage", f"file://{store}"],
        space=SPACE,
    )
    exp = results / "st"
    with (exp / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == REQUESTED and len({r["trial_id"] for r in rows}) == REQUESTED
    # Checkpoints went to the storage, not to the experiment folder.
    checkpoints = list((store / "st" / "ray" / "train").glob("*/checkpoint_*"))
    assert checkpoints and not (exp / "ray" / "train").exists()
    trial_folders = [p for p in (exp / "ray" / "tune").iterdir() if p.name.startswith("trial_driver_")]
    assert len(trial_folders) == REQUESTED and all((p / "result.json").is_file() for p in trial_folders)
    best = json.loads((exp / "best.json").read_text())
    assert best["trial_checkpoint_path"].startswith(str(store))
    assert not (exp / "best" / "resume").exists()  # the model only, copied through pyarrow
    assert validation_loss(exp / "best") == pytest.approx(best["best_val_loss"], rel=1e-4)
    # TensorBoard logs went to the storage too (no node needs the driver's folder), one run a
    # trial, and are mirrored beside the report.
    stored_runs = {p.parent.name for p in (store / "st" / "ray" / "tensorboard").glob("*/events.out.tfevents.*")}
    mirrored_runs = {p.parent.name for p in (exp / "tensorboard").glob("*/events.out.tfevents.*")}
    assert stored_runs == mirrored_runs == {r["trial_id"] for r in rows}

    # The report is rebuilt from the folder alone (mirror + the recorded storage).
    (exp / "best.json").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "gpt4all_ray.experiment.report", str(exp)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_S,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert json.loads((exp / "best.json").read_text())["best_val_loss"] == best["best_val_loss"]
    ledger(kind="storage: a file:// URI through pyarrow", trials=count_search(exp))
