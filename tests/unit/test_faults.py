"""The fault-injection switch: off by default, exact about where it fires, once when asked."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt4all_ray.train import faults


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
        "from gpt4all_ray.train import faults\nfor s in range(1, 6):\n"
        "    faults.after_step(1, s)\n    print(s, flush=True)\n"
    )
    env = {faults.FAULT_ENV: "kill:rank=1:step=3", faults.ONCE_ENV: str(marker)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == -9 and first.stdout.split() == ["1", "2"]  # SIGKILL right after step 3
    assert marker.read_text().startswith("killed rank 1 after step 3")
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.split() == ["1", "2", "3", "4", "5"]


def test_a_micro_batch_kill_fires_inside_its_step_only(tmp_path: Path) -> None:
    code = (
        "from gpt4all_ray.train import faults\nfor s in range(1, 4):\n    for m in range(1, 4):\n"
        "        faults.after_micro_batch(0, s, m)\n        print(f'{s}.{m}', flush=True)\n"
        "    faults.after_step(0, s)\n"
    )
    env = {faults.FAULT_ENV: "kill:rank=0:step=2:micro=2"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert killed.returncode == -9 and killed.stdout.split() == ["1.1", "1.2", "1.3", "2.1"]
    whole_step = subprocess.run(
        [sys.executable, "-c", code], env={faults.FAULT_ENV: "kill:rank=0:step=2"}, capture_output=True, text=True
    )
    assert whole_step.returncode == -9 and whole_step.stdout.split()[-1] == "2.3"  # after the step, not inside


def test_a_loss_spike_multiplies_only_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.FAULT_ENV, "spike:step=3:steps=2")
    assert [faults.loss_factor(0, s) for s in range(1, 6)] == [1.0, 1.0, 10.0, 10.0, 1.0]  # 10x unless told
    monkeypatch.setenv(faults.FAULT_ENV, "spike:step=2:factor=7")
    assert [faults.loss_factor(1, s) for s in range(1, 4)] == [1.0, 7.0, 1.0]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("driver:results=1", ("results", 1)), ("driver:trials=3", ("trials", 3)), ("kill:rank=1:step=3", None)],
)
def test_a_driver_fault_names_its_event_and_count(
    monkeypatch: pytest.MonkeyPatch, spec: str, expected: tuple[str, int] | None
) -> None:
    monkeypatch.setenv(faults.FAULT_ENV, spec)
    assert faults.driver_fault() == expected


@pytest.mark.parametrize("spec", ["driver", "driver:results=1:trials=2", "driver:step=3", "driver:trials=x"])
def test_bad_driver_faults_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="driver:results=N or driver:trials=N"):
        faults.parse(spec)


def test_workers_ignore_a_driver_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.FAULT_ENV, "driver:results=1")
    for step in (1, 2, 3):
        faults.after_micro_batch(0, step, 1)
        faults.after_step(0, step)
        assert faults.loss_factor(0, step) == 1.0


def _dies(pid: int) -> bool:
    """Whether the process is gone (or a zombie) within 30 s: SIGKILL is delivered asynchronously."""
    for _ in range(300):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_driver_fault_kills_its_process_group_once(tmp_path: Path) -> None:
    # The "driver" leads its own group (as the integration tests start it) and has a child in it,
    # as the local Ray it started: both die; with the marker present nothing fires again.
    marker = tmp_path / "fired"
    code = (
        "import subprocess, sys\nfrom gpt4all_ray.train import faults\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\nfaults.kill_driver('results', 1)\nprint('alive', flush=True)\nchild.kill()\n"
    )
    env = {faults.FAULT_ENV: "driver:results=1", faults.ONCE_ENV: str(marker)}
    first = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, start_new_session=True, timeout=60
    )
    child_pid, said = first.stdout.split("\n", 1)
    assert first.returncode == -9 and "killed the driver after 1 trial results" in said and "alive" not in said
    assert _dies(int(child_pid))  # the group's other process went with it
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.split()[-1] == "alive"


def test_the_loop_is_handed_no_faults_unless_a_worker_fault_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    assert isinstance(faults.from_environment(), faults.NoFaults)
    monkeypatch.setenv(faults.FAULT_ENV, "driver:trials=2")  # the driver's, not the loop's
    assert isinstance(faults.from_environment(), faults.NoFaults)
    monkeypatch.setenv(faults.FAULT_ENV, "nan:step=3:rank=1")
    injected = faults.from_environment()
    assert isinstance(injected, faults.EnvironmentFaults)
    assert math.isnan(injected.loss_factor(1, 3)) and injected.loss_factor(0, 3) == injected.loss_factor(1, 4) == 1.0
    monkeypatch.setenv(faults.FAULT_ENV, "nan:stp=3")
    with pytest.raises(ValueError, match="bad field 'stp=3'"):
        faults.from_environment()
