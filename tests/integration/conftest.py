"""Real Ray, real DeepSpeed, real Optuna on the tiny model. Each search runs as a user runs it:
`python -m gpt4all_ray.tune` in a subprocess, or `ray job submit` to a `ray start --head` node."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.process
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL_SPACE = "tests/integration/small_space.yaml"
SEARCH_TIMEOUT_S = 900  # Ray Train waits forever for workers it cannot place: always bound it


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "token"  # the same mode for ray start, job submit and the driver
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def run_search(command: list[str], space: str | None = SMALL_SPACE, env: dict[str, str] | None = None) -> str:
    """Run a search command (bounded in time) from the repo; fail with its output's tail. space=None:
    none given (a --resume runs the experiment's own); env: variables added to subprocess_env()'s."""
    command = [*command, "--space", space] if space else command
    proc = subprocess.run(
        command,
        cwd=REPO,
        env=subprocess_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


PRELOADED = ["tests.integration.worker_runs", "deepspeed", "transformers", "peft"]


class ForkedRank:
    """A rank of worker_runs.py forked by multiprocessing's fork server, with the part of Popen's
    interface the tests use (poll, kill, communicate, returncode: -9 when SIGKILLed)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, log: Path) -> None:
        self.process, self.log = process, log

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"rank {self.log.name}", timeout or 0)
        return self.log.read_text(errors="replace"), None


def launch_ranks(
    out: Path,
    cases: dict[str, dict],
    world: int = 1,
    env: dict[str, str] | None = None,
    resume_from: Path | None = None,
) -> list[ForkedRank]:
    """Start `world` ranks of worker_runs.py, as torchrun would (RANK, WORLD_SIZE, MASTER_*): each a
    new process, forked from a server that imported the worker's libraries once (the first call
    starts it), so that the many short attempts of the kill tests do not each pay 7 s of imports."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    from tests.integration import worker_runs

    out.mkdir(parents=True, exist_ok=True)
    port, ranks = free_port(), []
    argv = [str(out), json.dumps(cases)] + ([str(resume_from)] if resume_from else [])
    for rank in range(world):
        rank_env = subprocess_env() | (env or {})
        rank_env |= {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        log = out / f"rank{rank}.log"
        process = context.Process(target=worker_runs.forked_rank, args=(argv, rank_env, str(log)), daemon=False)
        process.start()
        ranks.append(ForkedRank(process, log))
    return ranks


def run_worker_cases(out: Path, cases: dict[str, dict], world: int = 1, resume_from: Path | None = None) -> None:
    procs = launch_ranks(out, cases, world, resume_from=resume_from)
    for proc in procs:
        output, _ = proc.communicate(timeout=SEARCH_TIMEOUT_S)
        assert proc.returncode == 0, output[-5000:]


@dataclass
class Experiment:
    dir: Path
    output: str
    tracking: Path | None = None
    """Where its MLflow store and W&B run folders went (tune.tracking), if it tracked."""


def tracking_env(folder: Path) -> dict[str, str]:
    """MLflow and W&B with no server, no account and no network, everything in `folder`: MLflow in
    SQLite there (through the variable that the space's setting would override), W&B offline."""
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(folder),
        "WANDB_CONFIG_DIR": str(folder / "wandb-config"),  # not the user's ~/.config/wandb
        "WANDB_CACHE_DIR": str(folder / "wandb-cache"),
    }


@pytest.fixture(scope="session")
def local_search(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    """The small search, on a local Ray instance that the command starts itself, tracked in MLflow
    and W&B too (tests/integration/test_tracking.py reads them back)."""
    results, tracking = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("tracking")
    command = [sys.executable, "-m", "gpt4all_ray.tune", "--results-dir", str(results), "--name", "it"]
    output = run_search([*command, "--set", "tune.tracking=mlflow,wandb"], env=tracking_env(tracking))
    return Experiment(results / "it", output, tracking)
