"""scripts/simulated_cluster.sh, as the cluster README runs it: Ray's autoscaler with the
fake_multinode provider adds one-CPU nodes from 0 as the search asks for them, a node hosting a
rank of a training trial is drained for preemption and killed, the trial resumes from its
checkpoint on a new node (charged to tune.preemption_restarts), and idle nodes are removed. The
goals are issue 27's, read from the script's last line."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.long]


def test_a_search_survives_a_preempted_node_on_an_autoscaling_cluster(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", "scripts/simulated_cluster.sh", "--out", str(tmp_path)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "simulated_cluster.json").read_text())
    assert result["nodes_added"] >= 2  # from 0: the head runs no trial workers until nodes exist
    assert result["max_nodes_one_trial"] == 2  # one trial's two ranks on two nodes (gloo across them)
    assert result["nodes_killed"] == 1 and result["resumed_trials"] == 1
    assert result["resumed_from_step"] > 0  # from its checkpoint, not from the start
    assert result["restarts_preemption"] == 1 and result["restarts_failure"] == 0  # the right budget
    assert result["trials_completed"] == result["trials_requested"] == 2
    assert result["trials_errored"] == 0 and result["trials_lost"] == 0
    assert result["resume_val_loss"]["relative_difference"] <= 1e-4
    assert result["nodes_removed"] >= 1 and result["worker_nodes_alive_at_end"] == 0  # idle nodes went
    # The timeline says it in order: nodes added, the node drained and killed, the resume, idle removal.
    timeline = (tmp_path / "timeline.txt").read_text()
    for said in ("node added", "drained for preemption", "resumed from step", "Terminated by autoscaler"):
        assert said in timeline, timeline
    summary = (tmp_path / "results" / "simulated" / "summary.md").read_text()
    assert "1 after losing a node to preemption" in summary and re.search(r"ranks ran on [2-9] nodes", summary)
