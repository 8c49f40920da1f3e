"""Run `python -m gpt4all_ray.tune` in a subprocess and report whether it ever imported Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_CODE = (
    "import sys; from gpt4all_ray.tune import main; "
    "rc = main(['--space', sys.argv[1], '--results-dir', sys.argv[2], *sys.argv[3:]]); "
    "print('ray imported' if 'ray' in sys.modules else 'ray never imported'); sys.exit(rc)"
)


def run_tune(space: Path, results: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # A regression would start a real search: keep it bounded and out of the repo's results/.
    return subprocess.run(
        [sys.executable, "-c", _CODE, str(space), str(results), *extra], capture_output=True, text=True, timeout=120
    )
