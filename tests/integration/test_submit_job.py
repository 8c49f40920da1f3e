"""`ray start --head` then `ray job submit --working-dir . -- python -m gpt4all_ray.tune`, as in the README."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, ray_bin, run_search, subprocess_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def head_node() -> Iterator[str]:
    dashboard = free_port()
    env = subprocess_env()
    # As the README says: on a machine that never ran Ray, `ray start` in token mode needs a token.
    subprocess.run([ray_bin(), "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [
            ray_bin(),
            "start",
            "--head",
            "--port",
            str(free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--num-cpus",
            "2",
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray_bin(), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_job_submission_to_a_local_head_node(head_node: str, tmp_path: Path) -> None:
    out = run_search(
        [
            ray_bin(),
            "job",
            "submit",
            "--address",
            head_node,
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "gpt4all_ray.tune",
            "--num-trials",
            "1",
            "--results-dir",
            str(tmp_path),
            "--name",
            "job",
        ]
    )
    assert "succeeded" in out
    assert "attached to the Ray cluster" in out
    with (tmp_path / "job" / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["stop_reason"] == "diverged"  # the enqueued planted trial
    assert (tmp_path / "job" / "best" / "model.safetensors").is_file()
