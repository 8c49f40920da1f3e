"""The fault-injection switch: off by default, exact about where it fires, once when asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all_ray import faults


def test_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    faults.after_step(0, 1)  # returns: nothing is injected


@pytest.mark.parametrize("spec", ["kill:rank=1", "crash:rank=0:step=3", "kill:rank=x:step=3", "kill:node=1:step=2"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=faults.FAULT_ENV):
        faults.parse(spec)


def test_kills_its_process_at_the_step_and_only_once(tmp_path: Path) -> None:
    marker = tmp_path / "fired"
    code = (
        "from gpt4all_ray import faults\nfor s in range(1, 6):\n    faults.after_step(1, s)\n    print(s, flush=True)\n"
    )
    env = {faults.FAULT_ENV: "kill:rank=1:step=3", faults.ONCE_ENV: str(marker)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == -9 and first.stdout.split() == ["1", "2"]  # SIGKILL right after step 3
    assert marker.read_text().startswith("killed rank 1 after step 3")
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.split() == ["1", "2", "3", "4", "5"]
