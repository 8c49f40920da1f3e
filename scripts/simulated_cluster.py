"""A search on a simulated autoscaling Ray cluster, on this one machine, with a node lost mid-trial.

Ray's own autoscaler runs with its fake_multinode node provider (cluster/local-autoscaling.yaml):
each worker "node" is a raylet of its own that the autoscaler starts when trials ask for CPUs and
stops when idle. This script brings the head up, submits search_spaces/simulated_cluster.yaml with
`ray job submit`, and when the first trial has reported its first checkpoint it takes away one node
that hosts a rank of it, as a spot reclaim does: the node is drained for preemption (what Ray 2.60's
SIGTERM handler and KubeRay do on notice), then every process of it is SIGKILLed. It waits for the
search, for the idle nodes to go, shuts the cluster down, then runs the killed trial's configuration
again on a local Ray, uninterrupted, to compare the validation loss after the resume.

It prints a timeline and, last, one JSON line (also written to <out>/simulated_cluster.json).
Usage: bash scripts/simulated_cluster.sh [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "cluster" / "local-autoscaling.yaml"
SPACE = "search_spaces/simulated_cluster.yaml"
GCS = "127.0.0.1:6379"  # the fake_multinode provider hard-codes the head's port
NAME = "simulated"
JOB_TIMEOUT_S = 900
IDLE_TIMEOUT_S = 180
TOLERANCE = 1e-4  # relative, on the first validation loss after the resume


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    events: list[tuple[float, str]] = field(default_factory=list)

    def add(self, what: str, at: float | None = None) -> None:
        at = time.time() if at is None else at
        self.events.append((at, what))
        print(f"[{at - self.started:6.1f} s] {what}", flush=True)


def ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:4])} ... failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def short(node_id: str) -> str:
    """The fake provider numbers its nodes: ffff...00003 is node 3 (00000 the head)."""
    return f"node-{node_id[-5:]}"


class Nodes:
    """What the GCS says of each node, polled: when each joined and when each died."""

    def __init__(self, dashboard: str, timeline: Timeline) -> None:
        self.dashboard, self.timeline = dashboard, timeline
        self.alive: dict[str, bool] = {}
        self.head = ""
        self.dead_messages: dict[str, str] = {}

    def poll(self) -> None:
        from ray.util.state import list_nodes

        for node in list_nodes(address=self.dashboard, detail=True, raise_on_missing_output=False):
            was = self.alive.get(node.node_id)
            now = node.state == "ALIVE"
            if node.is_head_node:
                self.head = node.node_id
            if was is None and now and not node.is_head_node:
                self.timeline.add(f"node added: {short(node.node_id)}", node.start_time_ms / 1000)
            if was and not now:
                self.dead_messages[node.node_id] = node.state_message or ""
                self.timeline.add(
                    f"node gone: {short(node.node_id)} ({node.state_message or 'no reason given'})",
                    (node.end_time_ms or time.time() * 1000) / 1000,
                )
            self.alive[node.node_id] = now

    @property
    def workers_alive(self) -> list[str]:
        return [n for n, up in self.alive.items() if up and n != self.head]


def node_processes(node_id: str) -> list[int]:
    """The node's raylet and everything it started (its workers and agents)."""
    parents: dict[int, int] = {}
    raylet = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if cmdline and cmdline[0].endswith(b"/raylet") and f"--node_id={node_id}".encode() in cmdline:
            raylet = int(proc.name)
    if raylet is None:
        return []
    family, grew = {raylet}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return sorted(family)


def preempt(node_id: str, timeline: Timeline) -> None:
    """A spot reclaim: the node is drained for preemption, then it is gone (every process killed)."""
    run(
        ray_bin(),
        "drain-node",
        "--address",
        GCS,
        "--node-id",
        node_id,
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        "simulated spot reclaim",
        "--deadline-remaining-seconds",
        "2",
    )
    timeline.add(f"node drained for preemption: {short(node_id)} (deadline 2 s)")
    time.sleep(2)
    pids = node_processes(node_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    timeline.add(f"node killed: {short(node_id)} ({len(pids)} processes SIGKILLed)")


def experiment_reports(exp_dir: Path) -> dict[str, list[Any]]:
    """Each trial's durable reports (what its workers reported, with every rank's node), by step."""
    from gpt4all_ray.evaluation import evaluations
    from gpt4all_ray.experiment.durable_reports import saved_reports

    train = exp_dir / "ray" / "train"
    runs = sorted(p for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    return {run.name: evaluations(saved_reports(str(run))) for run in runs}


def driver_node(dashboard: str) -> str | None:
    """Where the running trial's driver (Tune's function-trainable actor) is; one trial runs at a time."""
    from ray.util.state import list_actors

    drivers = list_actors(address=dashboard, filters=[("class_name", "=", "ImplicitFunc"), ("state", "=", "ALIVE")])
    return drivers[0].node_id if len(drivers) == 1 else None


def pick_victim(
    exp_dir: Path, nodes: Nodes, target: str, deadline: float, job_running: Callable[[], bool]
) -> tuple[str, str, str]:
    """(trial, node, why) once a running trial has reported a checkpoint: a worker node hosting one
    of its ranks (target "rank"), or the one hosting its driver (target "driver"; a trial whose
    driver is on the head is passed over)."""
    from gpt4all_ray.evaluation import StopReason

    while time.time() < deadline and job_running():
        nodes.poll()
        for trial, reports in experiment_reports(exp_dir).items():
            if not reports or reports[-1].stop_reason is not StopReason.RUNNING or reports[-1].resumed_from_step:
                continue
            ranks_on = reports[-1].worker_nodes
            if target == "rank":
                victim = next((n for n in ranks_on if n != nodes.head), None)
                if victim:
                    return (
                        trial,
                        victim,
                        f"it hosts a rank of trial {trial} (ranks on {', '.join(map(short, ranks_on))})",
                    )
                continue
            driver = driver_node(nodes.dashboard)
            if driver and driver != nodes.head:
                return trial, driver, f"it hosts trial {trial}'s driver (ranks on {', '.join(map(short, ranks_on))})"
        time.sleep(0.5)
    raise TimeoutError(f"no running trial had a checkpoint and its {target} on a worker node before the search ended")


def wait_for_job(client: Any, job: str, nodes: Nodes, deadline: float) -> str:
    """The job's final status (SUCCEEDED, FAILED or STOPPED)."""
    while time.time() < deadline:
        nodes.poll()
        status = str(client.get_job_status(job)).rpartition(".")[2]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(f"the job ran past {JOB_TIMEOUT_S} s")


def reference_run(out: Path, params: dict[str, Any]) -> list[Any]:
    """The killed trial's configuration, uninterrupted, on a local Ray (the cluster is down)."""
    space = yaml.safe_load((REPO / SPACE).read_text())
    space["name"] = "reference"
    space["tune"] |= {"num_trials": 1}
    space["enqueue"] = [params]
    path = out / "reference_space.yaml"
    path.write_text(yaml.safe_dump(space))
    env = os.environ | {"RAY_ADDRESS": "local"}
    # Two 1-CPU workers and a driver do not fit 2 CPUs; a worker's CPUs set its threads only
    # through int(cpus_per_worker), which is 1 either way.
    run(
        sys.executable,
        "-m",
        "gpt4all_ray.tune",
        "--space",
        str(path),
        "--results-dir",
        str(out / "results"),
        "--name",
        "reference",
        "--set",
        "resources.cpus_per_worker=0.5",
        cwd=REPO,
        env=env,
        timeout=JOB_TIMEOUT_S,
    )
    (reports,) = experiment_reports(out / "results" / "reference").values()
    return reports


def leaderboard(exp_dir: Path) -> list[dict[str, str]]:
    with (exp_dir / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "simulated_cluster")
    parser.add_argument(
        "--kill",
        choices=("rank", "driver"),
        default="rank",
        help="take away a node hosting a rank of the running trial (default), or one hosting its driver",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    from gpt4all_ray.search.cluster import unreachable

    if unreachable(GCS) is None:
        print(f"something already answers at {GCS}; stop that Ray cluster first (`ray stop`)", file=sys.stderr)
        return 2
    exp_dir = out / "results" / NAME
    if exp_dir.exists():
        print(f"{exp_dir} exists; pass another --out", file=sys.stderr)
        return 2
    if not (Path.home() / ".ray" / "auth_token").is_file() and not os.environ.get("RAY_AUTH_TOKEN"):
        run(ray_bin(), "get-auth-token", "--generate")  # token mode (scripts/setup.sh) needs one
    timeline = Timeline()
    dashboard_port = 8265
    run(
        ray_bin(),
        "start",
        "--head",
        "--port=6379",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--autoscaling-config={CONFIG}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--disable-usage-stats",
        env=os.environ | {"RAY_FAKE_CLUSTER": "1"},
        timeout=120,
    )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    timeline.add("head up: 1 CPU for the search's driver and trial drivers; worker nodes 0 (max 4, 1 CPU each)")
    nodes = Nodes(dashboard, timeline)
    killed: dict[str, Any] = {}
    status = "NOT_SUBMITTED"
    try:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(dashboard)
        # No --working-dir: every simulated node shares this machine's disk and Python environment
        # (as nodes built from one image do), and Ray unpacks a working_dir into a per-session folder
        # that all of them share here, each new node replacing the folder under the job's feet.
        search = f"--space {REPO / SPACE} --results-dir {out / 'results'} --name {NAME}"
        job = client.submit_job(entrypoint=f"python -m gpt4all_ray.tune {search}")
        timeline.add(f"job submitted: {job}")
        deadline = time.time() + JOB_TIMEOUT_S
        running = lambda: str(client.get_job_status(job)).rpartition(".")[2] in ("PENDING", "RUNNING")  # noqa: E731
        trial, victim, why = pick_victim(exp_dir, nodes, args.kill, deadline, running)
        timeline.add(f"trial {trial} has reported a checkpoint; {short(victim)} goes: {why}")
        killed = {"trial": trial, "node": victim, "at": time.time()}
        preempt(victim, timeline)
        status = wait_for_job(client, job, nodes, deadline)
        timeline.add(f"job ended: {status}")
        (out / "job.log").write_text(client.get_job_logs(job))
        idle_deadline = time.time() + IDLE_TIMEOUT_S
        while nodes.workers_alive and time.time() < idle_deadline:
            time.sleep(1)
            nodes.poll()
        timeline.add(f"worker nodes alive at the end: {len(nodes.workers_alive)}")
    finally:
        subprocess.run([ray_bin(), "stop", "--force"], capture_output=True, timeout=120)
        timeline.add("cluster stopped")

    reports = experiment_reports(exp_dir)
    for trial_id, trial_reports in reports.items():
        attempts: dict[int, set[str]] = {}
        for report in trial_reports:
            attempts.setdefault(report.resumed_from_step, set()).update(report.worker_nodes)
        for resumed_from, used in attempts.items():
            start = f"resumed from step {resumed_from}" if resumed_from else "first attempt"
            timeline.add(f"trial {trial_id} ({start}): ranks on {', '.join(sorted(map(short, used)))}")
    from gpt4all_ray.experiment.durable_reports import saved_restarts

    restarts = {t: saved_restarts(str(exp_dir / "ray" / "train" / t)) for t in reports}
    for trial_id, trial_restarts in restarts.items():
        for restart in trial_restarts:
            timeline.add(
                f"trial {trial_id}: workers restarted ({restart.cause.value}): {restart.error[:120]}", restart.at
            )

    rows = leaderboard(exp_dir)
    requested = yaml.safe_load((REPO / SPACE).read_text())["tune"]["num_trials"]
    finished = [r for r in rows if r["stop_reason"] not in ("error", "no_result") and r["best_val_loss"] != "inf"]
    resumed = {t: min((r.resumed_from_step for r in rs if r.resumed_from_step), default=0) for t, rs in reports.items()}
    resumed = {t: step for t, step in resumed.items() if step}
    # The first evaluation after the resume, against the same step of an uninterrupted run.
    comparison: dict[str, Any] = {}
    if killed and killed["trial"] in resumed:
        params = json.loads(
            next((exp_dir / "ray" / "tune").glob(f"trial_driver_{killed['trial']}_*/params.json")).read_text()
        )
        after = [r for r in reports[killed["trial"]] if r.resumed_from_step][0]
        reference = {r.step: r.val_loss for r in reference_run(out, params)}
        if after.step in reference:
            relative = abs(after.val_loss - reference[after.step]) / abs(reference[after.step])
            comparison = {
                "step": after.step,
                "resumed": after.val_loss,
                "uninterrupted": reference[after.step],
                "relative_difference": relative,
            }
            timeline.add(
                f"trial {killed['trial']} at step {after.step}: val_loss {after.val_loss:.6f} after the resume, "
                f"{reference[after.step]:.6f} uninterrupted (relative difference {relative:.1e})"
            )
    added = [n for n in nodes.alive if n != nodes.head]
    result = {
        "nodes_added": len(added),
        "nodes_removed": len([n for n in added if not nodes.alive[n] and n != killed.get("node")]),
        "nodes_killed": 1 if killed else 0,
        "max_nodes_one_trial": max((len(set(r.worker_nodes)) for rs in reports.values() for r in rs), default=0),
        "resumed_trials": len(resumed),
        "resumed_from_step": resumed.get(killed.get("trial", ""), 0),
        "restarts_preemption": sum(r.cause.value == "preemption" for rs in restarts.values() for r in rs),
        "restarts_failure": sum(r.cause.value == "failure" for rs in restarts.values() for r in rs),
        "trials_requested": requested,
        "trials_completed": len(finished),
        "trials_errored": sum(r["stop_reason"] == "error" for r in rows),
        "trials_lost": requested - len(finished),
        "worker_nodes_alive_at_end": len(nodes.workers_alive),
        "resume_val_loss": comparison,
        "seconds": round(time.time() - timeline.started, 1),
    }
    (out / "timeline.txt").write_text(
        "\n".join(f"[{at - timeline.started:6.1f} s] {what}" for at, what in sorted(timeline.events)) + "\n"
    )
    (out / "simulated_cluster.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
