"""Sum a reliability ledger (one JSON object per recorded test) into Markdown.

python -m tests.reliability.summary LEDGER COMMAND > results/reliability.md
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path


def main() -> int:
    ledger, command = Path(sys.argv[1]), sys.argv[2]
    entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    totals = Counter()
    for e in entries:
        for key in ("faults", "bad_inputs", "trials_requested", "trials_lost"):
            totals[key] += int(e.get(key, 0))
    lines = [
        "# Reliability battery",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}, {platform.node() or 'this machine'} "
        f"({platform.machine()}, Python {platform.python_version()}).",
        "",
        "| faults injected | bad inputs tried | trials requested | trials lost |",
        "|---|---|---|---|",
        f"| {totals['faults']} | {totals['bad_inputs']} | {totals['trials_requested']} | {totals['trials_lost']} |",
        "",
        "| test | faults | bad inputs | trials requested | trials lost | what |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        what = e.get("kind") or e.get("case") or ""
        lines.append(
            f"| {e['test'].split('::')[-1]} | {e.get('faults', 0)} | {e.get('bad_inputs', 0)} | "
            f"{e.get('trials_requested', 0)} | {e.get('trials_lost', 0)} | {what} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
