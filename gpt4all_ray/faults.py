"""Fault injection for recovery tests: off unless GPT4ALL_RAY_FAULT is set.

GPT4ALL_RAY_FAULT="kill:rank=1:step=7" SIGKILLs rank 1's process right after optimizer step 7:
a real process death, as a preempted node or an OOM-killer would cause. With
GPT4ALL_RAY_FAULT_ONCE=<file>, the fault fires only while <file> does not exist (it is created
first), so the restarted worker runs on past the same step.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULT_ENV = "GPT4ALL_RAY_FAULT"
ONCE_ENV = "GPT4ALL_RAY_FAULT_ONCE"


def parse(spec: str) -> tuple[str, dict[str, int]]:
    kind, *fields = spec.split(":")
    if kind != "kill":
        raise ValueError(f"{FAULT_ENV}={spec!r}: unknown fault {kind!r}; expected kill:rank=R:step=S")
    where = {}
    for field in fields:
        key, _, value = field.partition("=")
        if key not in ("rank", "step") or not value.isdigit():
            raise ValueError(f"{FAULT_ENV}={spec!r}: bad field {field!r}; expected rank=R or step=S")
        where[key] = int(value)
    if set(where) != {"rank", "step"}:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected kill:rank=R:step=S")
    return kind, where


def after_step(rank: int, global_step: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _, where = parse(spec)
    if (rank, global_step) != (where["rank"], where["step"]):
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.write_text(f"killed rank {rank} after step {global_step}\n")
    os.kill(os.getpid(), signal.SIGKILL)
