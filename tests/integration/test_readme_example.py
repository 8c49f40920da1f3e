"""README's Python example, run as written (in a folder of its own: results_dir="runs" is relative)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import REPO, SEARCH_TIMEOUT_S, subprocess_env


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def test_readme_python_example_runs_and_returns_the_best_trial(tmp_path: Path) -> None:
    example = readme_python_example()
    # After the example, what it returned, for the checks below.
    check = (
        "\nimport json\n"
        "print('RESULT ' + json.dumps({'dir': str(result.experiment_dir), 'rows': [r.trial_id for r in "
        "result.leaderboard], 'best': result.best.trial_id, 'config': result.best_config, "
        "'checkpoint': str(result.best_checkpoint)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", example + check],
        cwd=tmp_path,
        env=subprocess_env() | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    exp = Path(result["dir"])
    assert exp.parent == tmp_path / "runs"  # a user's run, never the repository's results/
    requested = int(re.search(r"tune\.num_trials=(\d+)", example).group(1))  # type: ignore[union-attr]
    assert len(result["rows"]) == requested and result["best"] == result["rows"][0]
    # The example printed one line per leaderboard row, best first.
    printed = [
        line.split()[0] for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in result["rows"]
    ]
    assert printed[: len(result["rows"])] == result["rows"]
    assert result["config"]["learning_rate"] > 0 and result["config"]["model"] == "tiny-gptj"
    assert Path(result["checkpoint"]) == exp / "best" and (exp / "best" / "config.json").is_file()
    card = (exp / "best" / "README.md").read_text()  # the model card every search writes
    assert card.startswith("---\n") and f"best trial {result['best']}" in card
    assert json.loads((exp / "best.json").read_text())["trial_id"] == result["best"]
