"""Every file in cluster/ checked offline: the launcher YAMLs against the schema Ray ships, after
Ray's own prepare_config; the KubeRay RayJob against the CRD schema of the KubeRay release it
targets (vendored in tests/unit/kuberay/) and the rules KubeRay's controller adds. The container
image's Ray, Python and CUDA agree with pyproject.toml and with the torch build the nodes install;
each GPU node type declares the GPU it has, and every GPU type a search space asks for is offered.
None exposes the dashboard beyond the cluster or holds a secret. Not checked: a real `ray up`."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = sorted((REPO / "cluster").glob("*.yaml"))
LAUNCHER = [p for p in CLUSTER if "provider" in yaml.safe_load(p.read_text())]
CLOUD = [p for p in LAUNCHER if yaml.safe_load(p.read_text())["provider"]["type"] in ("aws", "gcp")]
LOCAL = REPO / "cluster" / "local-autoscaling.yaml"
RAYJOBS = [p for p in CLUSTER if yaml.safe_load(p.read_text()).get("kind") == "RayJob"]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
KUBERAY_SCHEMA = Path(__file__).parent / "kuberay" / "rayjob-v1.7.0.schema.json"
SECRETS = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|hf_[A-Za-z0-9]{30,}|aws_secret_access_key|password\s*:", re.I)
IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-cu(?P<cuda>\d+)$")
# What each machine carries, as Ray names it (ray.util.accelerators: A100-40G and A100-80G are not
# detected by Ray; a node type must declare them).
GPU_OF = {
    "p4d.24xlarge": "A100-40G",
    "p4de.24xlarge": "A100-80G",
    "a2-highgpu-8g": "A100-40G",
    "a2-ultragpu-8g": "A100-80G",
    "nvidia-a100-80gb": "A100-80G",  # GKE's node label
}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def prepared(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` validates it: filled out with the provider's defaults (Ray's wheel
    lacks the fake provider's defaults file, so the simulated cluster's file is whole as written)."""
    return prepare_config(config) if path in CLOUD else config


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_file_is_a_launcher_config_or_a_rayjob() -> None:
    assert CLUSTER and sorted(LAUNCHER + RAYJOBS) == CLUSTER
    assert {p.name for p in CLOUD} >= {"aws-a100.yaml", "gcp-a100.yaml"}
    assert LOCAL in LAUNCHER and load(LOCAL)["provider"]["type"] == "fake_multinode"


@pytest.mark.parametrize("path", CLUSTER, ids=[p.name for p in CLUSTER])
def test_no_secret_and_no_exposed_dashboard(path: Path) -> None:
    text = path.read_text()
    assert not SECRETS.search(text)
    assert "0.0.0.0" not in text and "LoadBalancer" not in text and "NodePort" not in text


@pytest.mark.parametrize("path", LAUNCHER, ids=[p.name for p in LAUNCHER])
def test_launcher_config_validates_against_rays_schema(path: Path) -> None:
    config = load(path)
    validate_config(prepared(path, copy.deepcopy(config)))
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers)  # worker nodes scale from zero
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", CLOUD, ids=[p.name for p in CLOUD])
def test_cloud_nodes_share_storage_and_keep_the_dashboard_private(path: Path) -> None:
    config = load(path)
    head = config["available_node_types"][config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"] and "scheduling" not in head["node_config"]  # not spot
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    # Shared storage mounted on each host, handed to the container, the Hugging Face cache on it.
    assert any("/mnt/shared" in c and "mount" in c for c in config["initialization_commands"])
    options = config["docker"]["run_options"]
    assert "--volume /mnt/shared:/mnt/shared" in options and "--env HF_HOME=/mnt/shared/huggingface" in options


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
        validate_config(prepared(path, config))


# --- the image: Ray, Python, CUDA -----------------------------------------------------------------


def image_problems(image: str, torch_index: str | None, host_cuda: str | None) -> list[str]:
    """The container image against pyproject.toml, the index torch is installed from (its CUDA
    build) and the CUDA the host's driver is made for (None: not named by the host image)."""
    match = IMAGE.match(image)
    if not match:
        return [f"{image}: expected rayproject/ray:<ray version>-py3<minor>-cu<cuda>, pinned"]
    project, problems = pyproject()["project"], []
    ray_range = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}["ray"].specifier
    if not ray_range.contains(match["ray"]):
        problems.append(f"{image}: Ray {match['ray']} is outside pyproject.toml's {ray_range}")
    python = f"{match['py']}.{match['minor']}"
    if not SpecifierSet(project["requires-python"]).contains(python):
        wanted = project["requires-python"]
        problems.append(f"{image}: Python {python} is outside pyproject.toml's requires-python {wanted}")
    if torch_index is None or not torch_index.rstrip("/").endswith(f"/cu{match['cuda']}"):
        problems.append(f"{image}: torch must come from the cu{match['cuda']} index, not {torch_index}")
    if host_cuda is not None and int(host_cuda) < int(match["cuda"]):
        problems.append(f"{image}: the host's driver is made for CUDA cu{host_cuda}, older than the image's")
    return problems


def pip_commands(config: dict[str, Any]) -> list[list[str]]:
    return [shlex.split(c)[2:] for c in config["setup_commands"] if c.startswith("pip install")]


def torch_index(arguments: list[list[str]]) -> str | None:
    for args in arguments:
        for option in ("--index-url", "--extra-index-url"):
            if option in args and any(a.startswith("torch") for a in args):
                return args[args.index(option) + 1]
    return None


def image_of(path: Path) -> tuple[str, str | None, str | None]:
    """(image, torch index, host CUDA) of a cluster file."""
    config = load(path)
    if config.get("kind") == "RayJob":
        cluster = config["spec"]["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        (image,) = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}  # one image
        assert image.split(":")[1].startswith(cluster["rayVersion"] + "-")  # KubeRay's rayVersion agrees
        pip = yaml.safe_load(config["spec"]["runtimeEnvYAML"])["pip"]
        return image, torch_index([[*pip["pip_install_options"], *pip["packages"]]]), None
    disks = [d for t in config["available_node_types"].values() for d in t["node_config"].get("disks", [])]
    hosts = {re.search(r"-cu(\d+)-", d["initializeParams"]["sourceImage"]) for d in disks}
    host = min((int(m[1]) for m in hosts if m), default=None)
    return config["docker"]["image"], torch_index(pip_commands(config)), None if host is None else str(host)


@pytest.mark.parametrize("path", CLOUD + RAYJOBS, ids=[p.name for p in CLOUD + RAYJOBS])
def test_the_image_agrees_with_pyproject_and_the_torch_build(path: Path) -> None:
    assert image_problems(*image_of(path)) == []


def test_the_image_check_catches_planted_faults() -> None:
    index = "https://download.pytorch.org/whl/cu128"
    assert image_problems("rayproject/ray:latest-gpu", index, None) == [
        "rayproject/ray:latest-gpu: expected rayproject/ray:<ray version>-py3<minor>-cu<cuda>, pinned"
    ]
    assert image_problems("rayproject/ray:2.59.0-py39-cu124", index, "118") == [
        "rayproject/ray:2.59.0-py39-cu124: Ray 2.59.0 is outside pyproject.toml's <2.61,>=2.60",
        "rayproject/ray:2.59.0-py39-cu124: Python 3.9 is outside pyproject.toml's requires-python >=3.10",
        f"rayproject/ray:2.59.0-py39-cu124: torch must come from the cu124 index, not {index}",
        "rayproject/ray:2.59.0-py39-cu124: the host's driver is made for CUDA cu118, older than the image's",
    ]


# --- GPU types ------------------------------------------------------------------------------------


def declared_gpus(path: Path) -> dict[str, tuple[str | None, set[str]]]:
    """GPU node type -> (the GPU its machine has, the accelerator types it declares to Ray)."""
    config, found = load(path), {}
    if config.get("kind") == "RayJob":
        for group in config["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            declared = json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))
            machine = group["template"]["spec"].get("nodeSelector", {}).get("cloud.google.com/gke-accelerator")
            found[group["groupName"]] = (GPU_OF.get(machine), {k.split(":", 1)[1] for k in declared})
        return found
    for name, node_type in config["available_node_types"].items():
        machine = node_type["node_config"].get("InstanceType") or node_type["node_config"].get("machineType")
        declared = {k.split(":", 1)[1] for k in node_type["resources"] if k.startswith("accelerator_type:")}
        if machine in GPU_OF or declared:
            found[name] = (GPU_OF.get(machine), declared)
    return found


@pytest.mark.parametrize("path", CLOUD + RAYJOBS, ids=[p.name for p in CLOUD + RAYJOBS])
def test_each_gpu_node_type_declares_the_gpu_it_has(path: Path) -> None:
    gpus = declared_gpus(path)
    assert gpus and all({has} == declared for has, declared in gpus.values()), gpus


UNFILLED = [p for p in CLOUD if load(p)["provider"]["type"] != "aws"]


@pytest.mark.parametrize("path", UNFILLED, ids=[p.name for p in UNFILLED])
def test_the_autoscaler_knows_each_gpu_node_types_gpus(path: Path) -> None:
    """Ray's AWS provider fills in CPU and GPU from the instance type; its GCP provider does not,
    and a node type declaring no GPU is one the autoscaler never starts for a GPU trial."""
    config = load(path)
    for name in declared_gpus(path):
        resources = config["available_node_types"][name]["resources"]
        assert resources.get("GPU", 0) > 0 and resources.get("CPU", 0) > 0, name


@pytest.mark.parametrize("path", CLOUD + RAYJOBS, ids=[p.name for p in CLOUD + RAYJOBS])
def test_every_gpu_type_a_space_asks_for_is_offered(path: Path) -> None:
    asked = {s.name: load(s)["resources"].get("accelerator_type") for s in SPACES}
    asked = {name: gpu for name, gpu in asked.items() if gpu}
    offered = set().union(*(declared for _, declared in declared_gpus(path).values()))
    assert asked == {"gpt4allj_full_gptj6b.yaml": "A100-80G"}  # full GPT-J-6B: 80GB A100s only
    assert set(asked.values()) <= offered


# --- the simulated cluster ------------------------------------------------------------------------


def test_the_simulated_cluster_has_the_shape_of_the_a100_files() -> None:
    """A head that runs the drivers, one worker type scaled from 0 whose nodes are one worker's
    size (so a trial's ranks spread over nodes), room to replace a lost node, an idle timeout."""
    config, space = load(LOCAL), load(REPO / "search_spaces" / "simulated_cluster.yaml")
    resources = space["resources"]
    head = config["available_node_types"][config["head_node_type"]]
    (worker,) = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert config["head_node_type"] == "ray.head.default"  # the fake provider's fixed head name
    assert head["resources"]["CPU"] >= resources["driver_cpus"] and worker["min_workers"] == 0
    assert worker["resources"]["CPU"] == resources["cpus_per_worker"]
    assert worker["max_workers"] > resources["workers_per_trial"] * space["tune"]["max_concurrent"]
    assert config["idle_timeout_minutes"] <= 0.5  # the script waits for idle nodes to go


# --- KubeRay --------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The CRD schema refusing unknown fields, as `kubectl apply --validate=strict` does (the API
    server would prune a misspelled field silently)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def crd_problems(job: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(strict(json.loads(KUBERAY_SCHEMA.read_text())))
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job))


def rayjob_problems(job: dict[str, Any]) -> list[str]:
    """What KubeRay v1.7's controller refuses (utils/validation.go), or what would break the search."""
    problems = []
    spec = job.get("spec", {})
    if "gpt4all_ray.tune" not in spec.get("entrypoint", ""):
        problems.append("spec.entrypoint must run python -m gpt4all_ray.tune")
    cluster = spec.get("rayClusterSpec", {})
    head = cluster.get("headGroupSpec", {})
    if spec.get("submissionMode") != "SidecarMode":
        problems.append("spec.submissionMode must be SidecarMode (the submitter then runs in the head pod)")
    elif "submitterPodTemplate" in spec or "submitterConfig" in spec:
        problems.append("SidecarMode takes no submitterPodTemplate or submitterConfig")
    if head.get("template", {}).get("spec", {}).get("restartPolicy", "Never") != "Never":
        problems.append("SidecarMode needs the head pod's restartPolicy Never or unset")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append("headGroupSpec.serviceType must stay ClusterIP")
    if head.get("rayStartParams", {}).get("dashboard-host") == "127.0.0.1":
        problems.append("the operator polls the job through the head Service: dashboard-host must not be 127.0.0.1")
    if cluster.get("authOptions", {}).get("mode") != "token":
        problems.append("rayClusterSpec.authOptions.mode must be token (the dashboard takes jobs inside the cluster)")
    for group in cluster.get("workerGroupSpecs", []):
        name = group.get("groupName", "?")
        if group.get("minReplicas", 0) != 0:
            problems.append(f"worker group {name}: minReplicas must be 0 (scale from zero)")
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        if not any(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in containers):
            problems.append(f"worker group {name}: no nvidia.com/gpu limit")
    return problems


@pytest.mark.parametrize("path", RAYJOBS, ids=[p.name for p in RAYJOBS])
def test_rayjob_validates_against_kuberays_crd_and_controller_rules(path: Path) -> None:
    assert crd_problems(load(path)) == []
    assert rayjob_problems(load(path)) == []


def test_rayjob_checks_catch_planted_faults() -> None:
    job = load(RAYJOBS[0])
    bad = copy.deepcopy(job)
    bad["spec"]["submisionMode"] = bad["spec"].pop("submissionMode")  # a typo the API server would drop
    bad["spec"]["ttlSecondsAfterFinished"] = "an hour"
    assert crd_problems(bad) == [
        "spec.ttlSecondsAfterFinished: 'an hour' is not of type 'integer'",
        "spec: Additional properties are not allowed ('submisionMode' was unexpected)",
    ]
    bad = copy.deepcopy(job)
    cluster = bad["spec"]["rayClusterSpec"]
    cluster["headGroupSpec"]["serviceType"] = "LoadBalancer"
    cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] = "127.0.0.1"
    cluster["workerGroupSpecs"][0]["minReplicas"] = 2
    bad["spec"]["submitterConfig"] = {"backoffLimit": 2}
    del cluster["authOptions"]
    assert rayjob_problems(bad) == [
        "SidecarMode takes no submitterPodTemplate or submitterConfig",
        "headGroupSpec.serviceType must stay ClusterIP",
        "the operator polls the job through the head Service: dashboard-host must not be 127.0.0.1",
        "rayClusterSpec.authOptions.mode must be token (the dashboard takes jobs inside the cluster)",
        "worker group a100-80g-x8: minReplicas must be 0 (scale from zero)",
    ]


# --- the project's dependencies on the nodes ------------------------------------------------------


def pyproject_dependencies() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, pyproject()["project"]["dependencies"])}


def cluster_packages(path: Path) -> tuple[list[str], dict[str, str]]:
    """What a cluster file installs (pip requirements), and what its image provides (name -> version)."""
    config = load(path)
    image, _, _ = image_of(path)
    provided = {"ray": IMAGE.match(image)["ray"]}  # type: ignore[index]
    if config.get("kind") == "RayJob":
        return yaml.safe_load(config["spec"]["runtimeEnvYAML"])["pip"]["packages"], provided
    requirements = []
    for args in pip_commands(config):
        values = {args[i + 1] for i, a in enumerate(args) if a in ("--index-url", "--extra-index-url")}
        requirements += [a for a in args if not a.startswith("-") and a not in values]
    return requirements, provided


def dependency_problems(installed: list[str], provided: dict[str, str]) -> list[str]:
    """Every dependency of the project installed (or in the image) at a version its range admits."""
    wanted, problems = pyproject_dependencies(), []
    given = {canonicalize_name(r.name): r for r in map(Requirement, installed)}
    for name, requirement in wanted.items():
        if name in provided:
            if name in given:
                problems.append(f"{name}: installed again over the image's {provided[name]}")
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


@pytest.mark.parametrize("path", CLOUD + RAYJOBS, ids=[p.name for p in CLOUD + RAYJOBS])
def test_cluster_nodes_install_the_projects_dependencies(path: Path) -> None:
    assert dependency_problems(*cluster_packages(path)) == []


def test_dependency_check_catches_planted_faults() -> None:
    installed, provided = cluster_packages(CLOUD[0])
    planted = [p for p in installed if not p.startswith(("scipy", "torch", "matplotlib"))]
    planted += ["torch==2.14.0", "matplotlib", "ray==2.60.0"]
    assert dependency_problems(planted, provided) == [
        "torch: 2.14.0 is outside pyproject.toml's <2.14,>=2.4",
        "ray: installed again over the image's 2.60.0",
        "scipy: not installed (pyproject.toml: <2,>=1.11)",
        "matplotlib: unpinned, pyproject.toml says >=3.9",
    ]
