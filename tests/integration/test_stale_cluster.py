"""A Ray cluster that died uncleanly leaves its address in Ray's address file: the default command
(no RAY_ADDRESS) must say so and start a local instance, not retry the dead address for minutes."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, subprocess_env

pytestmark = pytest.mark.integration

CONNECT = (
    "from gpt4all_ray.config import Resources; from gpt4all_ray.search.cluster import connect_ray; "
    "import ray; connect_ray(Resources()); ray.shutdown()"
)


def test_a_stale_address_file_is_named_and_a_local_instance_starts() -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    # Ray's temp folder of the test's own (short: Ray's socket paths must fit 107 bytes).
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as tmp:
        file = Path(tmp) / "ray" / "ray_current_cluster"
        file.parent.mkdir()
        file.write_text(dead)
        proc = subprocess.run(
            [sys.executable, "-c", CONNECT],
            cwd=REPO,
            env=subprocess_env() | {"RAY_TMPDIR": tmp},
            capture_output=True,
            text=True,
            timeout=180,  # Ray's own retries of the dead address last many minutes
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert f"nothing answers at {dead} (Connection refused), the Ray address in {file}" in output
    assert "Ray: started a local Ray instance" in output
