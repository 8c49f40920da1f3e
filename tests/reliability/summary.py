"""Sum a reliability ledger (one JSON object per recorded test) into Markdown.

python -m tests.reliability.summary LEDGER COMMAND COMMIT > results/reliability.md
(COMMIT: `git describe --always --dirty` of the tree the battery ran on; "-dirty" when it had changes)
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

COLUMNS = {
    "faults": "faults injected",
    "bad_inputs": "bad inputs tried",
    "trials_requested": "trials requested",
    "trials_with_result": "with a result",
    "trials_errored": "ended in error",
    "trials_best_unusable": "best checkpoint missing or not reloading",
    "trials_lost": "trials lost",
}
"""Ledger field -> heading. The trial counts are counted from each run's outputs
(tests/reliability/accounting.py): lost = requested - trials with a result, no error and a best
checkpoint that reloads to its recorded loss."""


def main() -> int:
    ledger, command, commit = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    totals = Counter()
    for e in entries:
        for key in COLUMNS:
            totals[key] += int(e.get(key, 0))
    lines = [
        "# Reliability battery",
        "",
        f"Produced by `{command}` at commit {commit} on {time.strftime('%Y-%m-%d')}, "
        f"{platform.node() or 'this machine'} ({platform.machine()}, Python {platform.python_version()}).",
        "",
        "Trials are counted from what each run left behind (tests/reliability/accounting.py): lost = "
        "requested - trials with a result, no error and a best checkpoint that reloads to its recorded loss. "
        "A trial lost by design (a fault with no way back) says so in its row.",
        "",
        "| " + " | ".join(COLUMNS.values()) + " |",
        "|" + "---|" * len(COLUMNS),
        "| " + " | ".join(str(totals[k]) for k in COLUMNS) + " |",
        "",
        "| test | " + " | ".join(COLUMNS.values()) + " | what |",
        "|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    for e in entries:
        what = e.get("kind") or e.get("case") or ""
        counts = " | ".join(str(e.get(k, 0)) for k in COLUMNS)
        lines.append(f"| {e['test'].split('::')[-1]} | {counts} | {what} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
