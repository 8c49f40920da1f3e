"""Checks made before Ray starts: RAY_ADDRESS reachability and DeepSpeed's build cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gpt4all_ray.config import Resources, SpecError
from gpt4all_ray.ray_cluster import check_reachable, warn_if_deepspeed_op_unbuilt


def test_an_old_deepspeed_build_lock_is_named_with_how_to_clear_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    warn_if_deepspeed_op_unbuilt(Resources())
    assert "lock" not in capsys.readouterr().out  # a build may hold a fresh lock
    hour_ago = time.time() - 3600
    os.utime(lock, (hour_ago, hour_ago))
    warn_if_deepspeed_op_unbuilt(Resources())
    out = capsys.readouterr().out
    assert f"rm {lock}" in out and "60 min old" in out


def test_an_address_where_nothing_listens_is_refused() -> None:
    with pytest.raises(SpecError, match="RAY_ADDRESS=127.0.0.1:1: nothing answers"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(SpecError, match="expected host:port"):
        check_reachable("cluster-please")
