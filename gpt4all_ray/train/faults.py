"""Fault injection for recovery tests: off unless GPT4ALL_RAY_FAULT is set.

GPT4ALL_RAY_FAULT="kill:rank=1:step=7" SIGKILLs rank 1's process right after optimizer step 7:
a real process death, as a preempted node or an OOM-killer would cause; with ":micro=M" it dies
inside step 7 instead, after the backward pass of micro-batch M (1-based) of its gradient
accumulation and before the optimizer update. "nan:step=7" and
"inf:step=7" multiply the training loss of step 7 by NaN or inf on every rank before the backward
pass (":steps=N": steps 7 to 7+N-1; ":rank=R": on rank R alone), so the gradients go non-finite
in the real engine.
"spike:step=7" multiplies the loss of step 7 by 10 (":factor=F", ":steps=N"): a finite loss spike,
as a bad batch gives. "oom:rank=1:step=7" raises torch's OutOfMemoryError in rank 1 after step 7, as a GPU that ran
out of memory would (every attempt reaches the step again, so the trial's restarts run out). With
GPT4ALL_RAY_FAULT_ONCE=<file>, the fault fires only while <file> does not exist (it is created
first), so the restarted worker runs on past the same step.

"driver:results=N" SIGKILLs the experiment's driver (`python -m gpt4all_ray.tune`) and its
process group, which holds the local Ray it started, right after this driver received its N-th
trial result; "driver:trials=N" right after the experiment's N-th trial completed (N = the trials
requested: after the last one, before the driver writes its reports). Workers ignore a driver
fault. The experiment must start with one set; each --resume then follows the variable as it is.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Protocol

FAULT_ENV = "GPT4ALL_RAY_FAULT"
ONCE_ENV = "GPT4ALL_RAY_FAULT_ONCE"


FIELDS = {
    "kill": {"rank", "step"},
    "oom": {"rank", "step"},
    "nan": {"step"},
    "inf": {"step"},
    "spike": {"step"},
    "driver": set(),
}
OPTIONAL = {
    "kill": {"micro"},
    "oom": set(),
    "nan": {"steps", "rank"},
    "inf": {"steps", "rank"},
    "spike": {"steps", "factor"},
    "driver": {"results", "trials"},
}
ONE_OF = {"driver": {"results", "trials"}}  # exactly one of these
USAGE = (
    "expected kill:rank=R:step=S[:micro=M], oom:rank=R:step=S, nan|inf:step=S[:steps=N][:rank=R], "
    "spike:step=S[:steps=N][:factor=F], driver:results=N or driver:trials=N"
)


def parse(spec: str) -> tuple[str, dict[str, int]]:
    kind, *fields = spec.split(":")
    if kind not in FIELDS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: unknown fault {kind!r}; {USAGE}")
    where = {}
    for field in fields:
        key, _, value = field.partition("=")
        if key not in FIELDS[kind] | OPTIONAL[kind] or not value.isdigit():
            raise ValueError(f"{FAULT_ENV}={spec!r}: bad field {field!r}; {USAGE}")
        where[key] = int(value)
    if not FIELDS[kind] <= set(where) or (kind in ONE_OF and len(ONE_OF[kind] & set(where)) != 1):
        raise ValueError(f"{FAULT_ENV}={spec!r}: {USAGE}")
    return kind, where


def driver_fault() -> tuple[str, int] | None:
    """("results" or "trials", N) when GPT4ALL_RAY_FAULT names a driver fault; None otherwise."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    kind, where = parse(spec)
    if kind != "driver":
        return None
    ((event, count),) = where.items()
    return event, count


def _due(kind: str, rank: int, global_step: int, micro: int | None = None) -> bool:
    """Whether the configured fault of this kind fires at this rank and step (once, if asked);
    `micro` is given only inside a step, and matches only a fault that names one."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return False
    configured, where = parse(spec)
    if configured != kind:  # a driver fault, or another kind: nothing for this check
        return False
    first, count = where["step"], where.get("steps", 1)
    if not first <= global_step < first + count or where.get("rank", rank) != rank:
        return False
    if where.get("micro") != micro:
        return False
    once = os.environ.get(ONCE_ENV)
    if once:
        marker = Path(once)
        if marker.exists():
            return False
        if rank == 0 or kind == "kill":
            marker.write_text(f"{'killed' if kind == 'kill' else kind} rank {rank} after step {global_step}\n")
    return True


def after_micro_batch(rank: int, global_step: int, micro: int) -> None:
    """Inside optimizer step `global_step` (1-based), after micro-batch `micro` (1-based)."""
    if _due("kill", rank, global_step, micro):
        os.kill(os.getpid(), signal.SIGKILL)


def after_step(rank: int, global_step: int) -> None:
    if _due("kill", rank, global_step):
        os.kill(os.getpid(), signal.SIGKILL)
    if _due("oom", rank, global_step):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {FAULT_ENV} after step {global_step})")


def loss_factor(rank: int, global_step: int) -> float:
    """1.0, or NaN / inf / the spike's factor when a numerics fault is set for this (1-based)
    optimizer step."""
    for kind, factor in (("nan", math.nan), ("inf", math.inf)):
        if _due(kind, rank, global_step):
            return factor
    if _due("spike", rank, global_step):
        return float(parse(os.environ[FAULT_ENV])[1].get("factor", 10))
    return 1.0


def kill_driver(event: str, count: int) -> None:
    """SIGKILL the driver and, when it leads its process group (started in a session of its own),
    the whole group: the local Ray it started dies with it, as when its machine goes. A driver
    that does not lead its group kills only itself, never the shell or test runner above it."""
    once = os.environ.get(ONCE_ENV)
    what = f"killed the driver after {count} " + ("trial results" if event == "results" else "completed trials")
    if once:
        if Path(once).exists():
            return
        Path(once).write_text(what + "\n")
    print(f"{FAULT_ENV}: {what}", flush=True)
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class FaultPoints(Protocol):
    """The seam the training loop is handed: the three points where a test's fault can fire."""

    def loss_factor(self, rank: int, global_step: int) -> float: ...

    def after_micro_batch(self, rank: int, global_step: int, micro: int) -> None: ...

    def after_step(self, rank: int, global_step: int) -> None: ...


class NoFaults:
    """What a real run is handed: the loop pays nothing, not even an environment lookup."""

    def loss_factor(self, rank: int, global_step: int) -> float:
        return 1.0

    def after_micro_batch(self, rank: int, global_step: int, micro: int) -> None:
        return None

    def after_step(self, rank: int, global_step: int) -> None:
        return None


class EnvironmentFaults:
    """The fault GPT4ALL_RAY_FAULT names (read at each point: a restarted worker sees the ONCE
    marker its predecessor wrote)."""

    def loss_factor(self, rank: int, global_step: int) -> float:
        return loss_factor(rank, global_step)

    def after_micro_batch(self, rank: int, global_step: int, micro: int) -> None:
        after_micro_batch(rank, global_step, micro)

    def after_step(self, rank: int, global_step: int) -> None:
        after_step(rank, global_step)


def from_environment() -> FaultPoints:
    """EnvironmentFaults when GPT4ALL_RAY_FAULT names a worker fault (checked here, so a typo fails
    the worker at once), else NoFaults."""
    spec = os.environ.get(FAULT_ENV)
    return EnvironmentFaults() if spec and parse(spec)[0] != "driver" else NoFaults()
