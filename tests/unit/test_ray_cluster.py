"""Checks made before Ray starts: RAY_ADDRESS reachability and DeepSpeed's build cache."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from gpt4all_ray.config import Resources, SpecError
from gpt4all_ray.search import cluster as ray_cluster
from gpt4all_ray.search.cluster import (
    attached_to_running_cluster,
    auto_address,
    check_reachable,
    warn_if_deepspeed_op_unbuilt,
)
from gpt4all_ray.train.ds_ops import extensions_dir, use_own_op_builds


def test_an_old_deepspeed_build_lock_is_named_with_how_to_clear_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # torch builds in it directly
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    warn_if_deepspeed_op_unbuilt(Resources())
    assert "lock" not in capsys.readouterr().out  # a build may hold a fresh lock
    hour_ago = time.time() - 3600
    os.utime(lock, (hour_ago, hour_ago))
    warn_if_deepspeed_op_unbuilt(Resources())
    out = capsys.readouterr().out
    assert f"rm {lock}" in out and "60 min old" in out


def test_the_first_build_is_announced_until_the_op_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    warn_if_deepspeed_op_unbuilt(Resources())
    assert "compiles its CPU shared-memory op on its first start in this Python environment" in capsys.readouterr().out
    warn_if_deepspeed_op_unbuilt(Resources(gpus_per_worker=1))
    assert capsys.readouterr().out == ""  # GPU workers do not load it
    (tmp_path / "deepspeed_shm_comm").mkdir()
    built = tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built.write_bytes(b"")
    warn_if_deepspeed_op_unbuilt(Resources())
    assert capsys.readouterr().out == ""
    os.utime(built, (0, 0))  # older than this environment's DeepSpeed sources: it will be rebuilt
    warn_if_deepspeed_op_unbuilt(Resources())
    assert "compiles its CPU shared-memory op" in capsys.readouterr().out


def test_each_python_environment_builds_its_ops_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", "/work/a/.venv")
    first = extensions_dir()
    assert extensions_dir() == first  # stable for one environment
    monkeypatch.setattr(sys, "prefix", "/work/b/.venv")
    assert extensions_dir() != first and extensions_dir().parent == first.parent
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/scratch/ops")  # the user's choice wins
    assert extensions_dir() == Path("/scratch/ops")


def test_workers_build_ops_with_this_environments_ninja(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The system's ninja first on PATH (a .venv not activated, as under `ray job submit`).
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_own_op_builds()
    scripts = sysconfig.get_path("scripts")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(extensions_dir())
    assert shutil.which("ninja") == os.path.join(scripts, "ninja")  # DeepSpeed's dependency, pip's ninja
    use_own_op_builds()
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]  # added once
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))  # an environment without ninja
    monkeypatch.setenv("PATH", "/usr/bin")
    use_own_op_builds()
    assert os.environ["PATH"] == "/usr/bin"


def test_an_address_where_nothing_listens_is_refused() -> None:
    with pytest.raises(SpecError, match="RAY_ADDRESS=127.0.0.1:1: nothing answers"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(SpecError, match="expected host:port"):
        check_reachable("cluster-please")


@pytest.mark.parametrize(
    ("address", "running_cluster", "asked"),
    [
        ("", True, ["auto"]),
        ("", False, ["local"]),  # Ray's lookup found no cluster: "auto" is never asked
        ("auto", False, ["local"]),  # "local" said outright: ray.init would read "auto" from RAY_ADDRESS
        ("local", True, ["local"]),  # Ray's meaning: a new local instance, even beside a running cluster
    ],
)
def test_ray_address_picks_the_cluster_to_attach_to_or_start(
    address: str, running_cluster: bool, asked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from gpt4all_ray.search.cluster import connect_ray

    calls: list[str] = []

    def init(address: str, **_: object) -> None:
        calls.append(address)
        if address == "auto" and not running_cluster:
            raise ConnectionError("no running cluster")

    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setattr(ray, "init", init)
    # Ray's lookup of a running cluster, and its TCP check, answer as the case says.
    monkeypatch.setattr(ray_cluster, "auto_address", lambda: "127.0.0.1:6379" if running_cluster else None)
    monkeypatch.setattr(ray_cluster, "unreachable", lambda _: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    connect_ray(Resources(workers_per_trial=2, cpus_per_worker=0.5, driver_cpus=0.5))
    assert calls == asked


def fake_ray(monkeypatch: pytest.MonkeyPatch, address: str, running_cluster: bool, have: dict[str, float]) -> None:
    import ray

    def init(address: str, **_: object) -> None:
        if address == "auto" and not running_cluster:
            raise ConnectionError("no running cluster")

    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setattr(ray, "init", init)
    # Ray's lookup of a running cluster, and its TCP check, answer as the case says.
    monkeypatch.setattr(ray_cluster, "auto_address", lambda: "127.0.0.1:6379" if running_cluster else None)
    monkeypatch.setattr(ray_cluster, "unreachable", lambda _: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: have)


@pytest.mark.parametrize(
    ("address", "running_cluster"),
    [("local", True), ("", False), ("auto", False)],  # auto with no cluster: a local start as well
)
def test_a_local_instance_too_small_for_one_trial_is_refused(
    address: str, running_cluster: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt4all_ray.search.cluster import connect_ray

    fake_ray(monkeypatch, address, running_cluster, {"CPU": 2.0})
    with pytest.raises(SpecError, match="one trial needs 4.5 CPUs but this Ray cluster has 2 CPUs "):
        connect_ray(Resources(workers_per_trial=4, cpus_per_worker=1.0, driver_cpus=0.5))


def test_a_gpu_space_on_a_local_instance_without_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt4all_ray.search.cluster import connect_ray

    fake_ray(monkeypatch, "", False, {"CPU": 16.0})
    with pytest.raises(SpecError, match="one trial needs 8 GPUs but this Ray cluster has 0 GPUs "):
        connect_ray(Resources(workers_per_trial=8, cpus_per_worker=1.0, gpus_per_worker=1.0, driver_cpus=1.0))


@pytest.mark.parametrize("address", ["", "auto"])
def test_an_attached_cluster_too_small_now_is_a_warning(
    address: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpt4all_ray.search.cluster import connect_ray

    fake_ray(monkeypatch, address, True, {"CPU": 4.0})  # a head node whose GPU workers autoscale from 0
    connect_ray(Resources(workers_per_trial=8, cpus_per_worker=8.0, gpus_per_worker=1.0, driver_cpus=1.0))
    err = capsys.readouterr().err
    assert "one trial needs 65 CPUs and 8 GPUs but this Ray cluster has 4 CPUs and 0 GPUs now" in err
    assert "autoscaler" in err


def plant_address_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str) -> Path:
    """Ray's address file in a temp dir of the test's own, naming `address`. Ray's lookup also
    takes any GCS process running on this machine first; the test sees the file alone."""
    import ray._private.services

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(ray._private.services, "find_gcs_addresses", lambda: [])
    file = tmp_path / "ray" / "ray_current_cluster"
    file.parent.mkdir()
    file.write_text(address)
    return file


def test_a_dead_clusters_address_file_is_named_and_not_attached_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    file = plant_address_file(tmp_path, monkeypatch, f"127.0.0.1:{port}")
    assert auto_address() == f"127.0.0.1:{port}"  # what ray.init(address="auto") would retry for minutes
    import ray

    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("ray.init called with a dead address"))
    assert attached_to_running_cluster() is False
    out = capsys.readouterr().out
    assert f"nothing answers at 127.0.0.1:{port} (Connection refused), the Ray address in {file}" in out
    assert "starting a local instance" in out


def test_no_address_file_and_no_cluster_means_a_local_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plant_address_file(tmp_path, monkeypatch, "").unlink()
    assert auto_address() is None and attached_to_running_cluster() is False
