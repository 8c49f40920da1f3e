"""Run `python -m gpt4all_ray.tune` in a subprocess and report whether it ever imported Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_CODE = (
    "import sys; from gpt4all_ray.cli.tune import main; "
    "rc = main(sys.argv[1:]); "
    "print('ray imported' if 'ray' in sys.modules else 'ray never imported'); sys.exit(rc)"
)


def run_tune(space: Path, results: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # A regression would start a real search: keep it bounded and out of the repo's results/.
    # A dry run writes nothing and refuses --results-dir; the folder is still checked to stay absent.
    where = [] if "--dry-run" in extra else ["--results-dir", str(results)]
    return subprocess.run(
        [sys.executable, "-c", _CODE, "--space", str(space), *where, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
