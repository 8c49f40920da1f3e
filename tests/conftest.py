"""The reliability battery's ledger: each test records what it injected or tried and what was
lost; `scripts/reliability.sh` sums the ledger into results/reliability.md."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Record = Callable[..., None]


@pytest.fixture
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Record:
    """record(faults=..., bad_inputs=..., trials=TrialCount, kind=... or case=...): the trial counts
    come from tests/reliability/accounting.py, counted from what the run left behind."""
    path = Path(os.environ.get("GPT4ALL_RAY_LEDGER", tmp_path / "ledger.jsonl"))

    def record(trials: Any = None, **counts: object) -> None:
        fields = trials.ledger_fields() if trials is not None else {}
        with path.open("a") as f:
            f.write(json.dumps({"test": request.node.nodeid} | counts | fields) + "\n")

    return record
