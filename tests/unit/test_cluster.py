"""Every file in cluster/ validates offline (one test over the folder): cluster-launcher YAMLs
against the schema Ray ships, after Ray's own prepare_config; the KubeRay RayJob against the
structure KubeRay expects. None exposes the dashboard beyond the cluster or holds a secret."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = sorted((Path(__file__).resolve().parents[2] / "cluster").glob("*.yaml"))
LAUNCHER = [p for p in CLUSTER if "provider" in yaml.safe_load(p.read_text())]
RAYJOBS = [p for p in CLUSTER if yaml.safe_load(p.read_text()).get("kind") == "RayJob"]
SECRETS = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|hf_[A-Za-z0-9]{30,}|aws_secret_access_key|password\s*:", re.I)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_every_file_is_a_launcher_config_or_a_rayjob() -> None:
    assert CLUSTER and sorted(LAUNCHER + RAYJOBS) == CLUSTER
    assert {p.name for p in LAUNCHER} >= {"aws-a100.yaml", "gcp-a100.yaml"}


@pytest.mark.parametrize("path", CLUSTER, ids=[p.name for p in CLUSTER])
def test_no_secret_and_no_exposed_dashboard(path: Path) -> None:
    text = path.read_text()
    assert not SECRETS.search(text)
    assert "0.0.0.0" not in text and "LoadBalancer" not in text and "NodePort" not in text


@pytest.mark.parametrize("path", LAUNCHER, ids=[p.name for p in LAUNCHER])
def test_launcher_config_validates_against_rays_schema(path: Path) -> None:
    config = load(path)
    validate_config(prepare_config(copy.deepcopy(config)))
    head = config["available_node_types"][config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"] and "scheduling" not in head["node_config"]  # not spot
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers)  # A100 nodes scale from zero
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("/mnt/shared" in c for c in config["setup_commands"])  # shared storage for checkpoints


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["available_node_types"][c["head_node_type"]].update(min_worker=1), "'min_worker' was unexpected"),
        (lambda c: c.update(max_workers="four"), "'four' is not of type 'integer'"),
        (lambda c: c.update(idle_timeout=5), "'idle_timeout' was unexpected"),
    ],
)
@pytest.mark.parametrize("path", LAUNCHER, ids=[p.name for p in LAUNCHER])
def test_a_planted_bad_key_or_type_is_rejected_with_rays_message(path: Path, change, message: str) -> None:  # noqa: ANN001
    config = load(path)
    change(config)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        validate_config(prepare_config(config))


def rayjob_problems(job: dict[str, Any]) -> list[str]:
    """What KubeRay would refuse, or what would break the search, in a RayJob manifest."""
    problems = []
    if job.get("apiVersion") != "ray.io/v1" or job.get("kind") != "RayJob":
        problems.append("apiVersion/kind must be ray.io/v1 RayJob")
    spec = job.get("spec", {})
    if "gpt4all_ray.tune" not in spec.get("entrypoint", ""):
        problems.append("spec.entrypoint must run python -m gpt4all_ray.tune")
    cluster = spec.get("rayClusterSpec", {})
    head = cluster.get("headGroupSpec", {})
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append("headGroupSpec.serviceType must stay ClusterIP")
    if head.get("rayStartParams", {}).get("dashboard-host") != "127.0.0.1":
        problems.append("headGroupSpec.rayStartParams.dashboard-host must be 127.0.0.1")
    if not head.get("template", {}).get("spec", {}).get("containers"):
        problems.append("headGroupSpec.template.spec.containers is empty")
    groups = cluster.get("workerGroupSpecs", [])
    if not groups:
        problems.append("rayClusterSpec.workerGroupSpecs is empty")
    for group in groups:
        name = group.get("groupName", "?")
        if group.get("minReplicas", 0) != 0:
            problems.append(f"worker group {name}: minReplicas must be 0 (scale from zero)")
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        gpus = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in containers]
        if not any(gpus):
            problems.append(f"worker group {name}: no nvidia.com/gpu limit")
    return problems


@pytest.mark.parametrize("path", RAYJOBS, ids=[p.name for p in RAYJOBS])
def test_rayjob_has_the_structure_kuberay_expects(path: Path) -> None:
    assert rayjob_problems(load(path)) == []


def test_rayjob_check_catches_planted_faults() -> None:
    job = load(RAYJOBS[0])
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = 2
    assert rayjob_problems(bad) == [
        "headGroupSpec.serviceType must stay ClusterIP",
        "worker group a100x8: minReplicas must be 0 (scale from zero)",
    ]


def pyproject_dependencies() -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((CLUSTER[0].parents[1] / "pyproject.toml").read_text())
    return {canonicalize_name(r.name): r for r in map(Requirement, pyproject["project"]["dependencies"])}


def cluster_packages(path: Path) -> tuple[list[str], dict[str, str]]:
    """What a cluster file installs (pip arguments), and what its image provides (name -> version)."""
    config = load(path)
    if config.get("kind") == "RayJob":
        image = config["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        provided = {"ray": re.search(r"ray:(\d+\.\d+\.\d+)", image)[1]}  # type: ignore[index]
        return yaml.safe_load(config["spec"]["runtimeEnvYAML"])["pip"], provided
    (command,) = [c for c in config["setup_commands"] if c.startswith("pip install")]
    return [a for a in shlex.split(command)[2:] if not a.startswith("-")], {}


def dependency_problems(installed: list[str], provided: dict[str, str]) -> list[str]:
    """Every dependency of the project installed (or in the image) at a version its range admits."""
    wanted, problems = pyproject_dependencies(), []
    given = {canonicalize_name(r.name): r for r in map(Requirement, installed)}
    for name, requirement in wanted.items():
        if name in provided:
            pinned = provided[name]
        elif name not in given:
            problems.append(f"{name}: not installed (pyproject.toml: {requirement.specifier})")
            continue
        elif given[name].specifier == requirement.specifier:
            continue
        else:
            pins = [s.version for s in given[name].specifier if s.operator == "=="]
            if not pins:
                asked = given[name].specifier or "unpinned"
                problems.append(f"{name}: {asked}, pyproject.toml says {requirement.specifier}")
                continue
            pinned = pins[0]
        if not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{name}: {pinned} is outside pyproject.toml's {requirement.specifier}")
    return problems


@pytest.mark.parametrize("path", CLUSTER, ids=[p.name for p in CLUSTER])
def test_cluster_nodes_install_the_projects_dependencies(path: Path) -> None:
    assert dependency_problems(*cluster_packages(path)) == []


def test_dependency_check_catches_planted_faults() -> None:
    installed, provided = cluster_packages(LAUNCHER[0])
    planted = [p for p in installed if not p.startswith(("scipy", "torch", "matplotlib"))]
    planted += ["torch==2.14.0", "matplotlib"]
    assert dependency_problems(planted, provided) == [
        "torch: 2.14.0 is outside pyproject.toml's <2.14,>=2.4",
        "scipy: not installed (pyproject.toml: <2,>=1.11)",
        "matplotlib: unpinned, pyproject.toml says >=3.9",
    ]
