"""Cluster configs (launcher YAMLs, KubeRay manifests, runtime_env): valid, private, token-authenticated,
GPU groups scaling from zero, and every GPU preset schedulable on them. Offline, no Ray cluster."""

import copy
import importlib.metadata
import shlex
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rayssl.config import FinetuneConfig, PretrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["raycluster.yaml", "rayjob-pretrain.yaml", "rayjob-sweep.yaml"]
RAY_PORTS = (6379, 8265, 10001)


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# ---------------------------------------------------------------------------------------------------
# Cluster launcher


def launcher_problems(cfg: dict) -> list[str]:
    """What makes a launcher config unfit for rayssl (empty list: fit)."""
    problems = []
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    head_start = " ".join(cfg["head_start_ray_commands"])
    if head.get("resources", {}).get("CPU") != 0 or "--num-cpus=0" not in head_start:
        problems.append("head node can run training (needs resources CPU: 0 and ray start --num-cpus=0)")
    gpu_types = {n: t for n, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0}
    if sorted(t["resources"]["GPU"] for t in gpu_types.values()) != [1, 8]:
        problems.append(f"expected one 1-GPU and one 8-GPU worker type, got {sorted(gpu_types)}")
    problems += [f"GPU type {n} has min_workers {t.get('min_workers')}" for n, t in gpu_types.items() if t.get("min_workers") != 0]
    if not cfg.get("idle_timeout_minutes", 0) > 0:
        problems.append("idle_timeout_minutes missing")
    setup = " ".join(cfg["setup_commands"])
    if "cluster/requirements.txt" not in setup or "--no-deps" not in setup:
        problems.append("setup_commands do not install rayssl with its pinned requirements")
    for perm in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        if any(perm["FromPort"] <= p <= perm["ToPort"] for p in RAY_PORTS) or perm.get("IpProtocol") == "-1":
            problems.append(f"security group opens a Ray port to {perm.get('IpRanges')}")
    every_cmd = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    if "0.0.0.0" in head_start or "--dashboard-host=127.0.0.1" not in head_start:
        problems.append("dashboard not bound to loopback")
    if "ray-client-server-port" in every_cmd:
        problems.append("Ray client server exposed")
    token_everywhere = all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c)
    if not token_everywhere or "--env RAY_AUTH_MODE=token" not in cfg.get("docker", {}).get("run_options", []):
        problems.append("token authentication off")
    if "RAY_AUTH_MODE=disabled" in yaml.safe_dump(cfg, width=10**6):
        problems.append("token authentication off")
    return problems


# What each launcher config declares: {node type: (resources, min_workers, max_workers, GPUs of its machine)}
LAUNCHER_NODES = {
    "aws.yaml": {"head": ({"CPU": 0}, 0, 0, 0), "gpu_8x": ({"CPU": 192, "GPU": 8}, 0, 2, 8),
                 "gpu_1x": ({"CPU": 8, "GPU": 1}, 0, 8, 1), "cpu_16": ({"CPU": 16}, 0, 2, 0)},
    "gcp.yaml": {"head": ({"CPU": 0}, 0, 0, 0), "gpu_8x": ({"CPU": 96, "GPU": 8}, 0, 2, 8),
                 "gpu_1x": ({"CPU": 12, "GPU": 1}, 0, 8, 1), "cpu_16": ({"CPU": 16}, 0, 2, 0)},
}
AWS_GPUS = {"g5.48xlarge": 8, "g5.2xlarge": 1}  # A10Gs per instance type; the m6i types have none
# rayssl from the checkout file_mounts ships to ~/rayssl, on the versions the suite runs (cluster/requirements.txt)
PINNED_SETUP = ["pip install -q -r ~/rayssl/cluster/requirements.txt", "pip install -q --no-deps -e ~/rayssl"]


def machine_gpus(node_config: dict) -> int:
    """GPUs of a node type's machine: GCP's guestAccelerators, or AWS's instance type."""
    if "machineType" in node_config:
        return sum(a["acceleratorCount"] for a in node_config.get("guestAccelerators", []))
    return AWS_GPUS.get(node_config["InstanceType"], 0)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_validates_against_ray_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(load(name))  # as `ray up` reads it: defaults merged, setup commands per node kind
    validate_config(cfg)  # Ray's JSON schema: raises on an unknown or mistyped field
    assert cfg["cluster_name"] == "rayssl" and cfg["provider"]["type"] == name.removesuffix(".yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and {
        n: (t["resources"], t["min_workers"], t["max_workers"], machine_gpus(t["node_config"])) for n, t in types.items()
    } == LAUNCHER_NODES[name]
    assert sum(t["max_workers"] for t in types.values()) <= cfg["max_workers"] == 12  # the cap cuts no type short
    # the head and every worker install rayssl with the pinned requirements, from the checkout they mount
    assert cfg["head_setup_commands"] == cfg["worker_setup_commands"] == PINNED_SETUP
    assert cfg["file_mounts"]["~/rayssl"] == "." and cfg["initialization_commands"] == []
    ray = importlib.metadata.version("ray")  # the image's Ray is the one pinned and tested
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray}-py311-gpu"
    assert cfg["docker"]["head_image"] == f"rayproject/ray:{ray}-py311"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_is_private_token_authenticated_and_scales_gpus_from_zero(name):
    cfg = load(name)
    assert launcher_problems(cfg) == []
    scheme = "s3" if name == "aws.yaml" else "gs"
    assert f"run.storage_path={scheme}://" in (CLUSTER / name).read_text()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["available_node_types"]["gpu_8x"].update(min_workers=1), "min_workers 1"),
        (lambda c: c["available_node_types"]["head"]["resources"].update(CPU=8), "head node can run training"),
        (lambda c: c["docker"]["run_options"].remove("--env RAY_AUTH_MODE=token"), "token authentication off"),
        (lambda c: c.update(head_start_ray_commands=[s.replace("127.0.0.1", "0.0.0.0") for s in c["head_start_ray_commands"]]), "loopback"),
    ],
)
def test_launcher_check_catches_a_bad_config(mutate, expected):
    cfg = copy.deepcopy(load("aws.yaml"))
    mutate(cfg)
    assert any(expected in p for p in launcher_problems(cfg))


def test_aws_security_group_opening_dashboard_is_caught():
    cfg = load("aws.yaml")
    cfg["provider"]["security_group"]["IpPermissions"].append(
        {"FromPort": 8000, "ToPort": 9000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )
    assert any("Ray port" in p for p in launcher_problems(cfg))


def test_cluster_pins_satisfy_the_project_and_are_the_tested_versions():
    pins = {}
    for line in (CLUSTER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name.split("[")[0])] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, project):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{dependency.name} is a dependency of rayssl but not pinned for cluster nodes"
        assert dependency.specifier.contains(pins[name]), f"pin {name}=={pins[name]} violates {dependency}"
    # the README's test install takes these pins, so the suite runs on what the nodes get
    assert {n: importlib.metadata.version(n) for n in pins} == pins


# ---------------------------------------------------------------------------------------------------
# KubeRay


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _gpus(group: dict) -> int:
    return max(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in _containers(group))


def pod_security_problems(where: str, pod_spec: dict) -> list[str]:
    """A pod template must run non-root, without privilege escalation and with every capability dropped."""
    problems = []
    pod = pod_spec.get("securityContext", {})
    if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 0) == 0:
        problems.append(f"{where}: pod may run as root")
    for c in pod_spec.get("containers", []):
        ctx = c.get("securityContext", {})
        if ctx.get("allowPrivilegeEscalation") is not False or ctx.get("privileged"):
            problems.append(f"{where}: container {c['name']} may escalate privileges")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: container {c['name']} keeps Linux capabilities")
    return problems


def raycluster_problems(spec: dict) -> list[str]:
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("in-tree autoscaler off")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append("token authentication off")
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        problems += pod_security_problems(g.get("groupName", "head"), g["template"]["spec"])
        for c in _containers(g):
            for e in c.get("env", []):
                if e["name"] == "RAY_AUTH_MODE" and e.get("value") != "token":
                    problems.append(f"container {c['name']} sets RAY_AUTH_MODE={e.get('value')}")
    if str(spec["headGroupSpec"]["rayStartParams"].get("num-cpus")) != "0":
        problems.append("head can run training (rayStartParams num-cpus must be 0)")
    if spec["headGroupSpec"].get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append("head service exposed outside the cluster")
    gpu_groups = [g for g in spec["workerGroupSpecs"] if _gpus(g) > 0]
    if sorted(_gpus(g) for g in gpu_groups) != [1, 8]:
        problems.append("expected a 1-GPU and an 8-GPU worker group")
    for g in gpu_groups:
        if g.get("minReplicas") != 0 or g.get("replicas", 0) != 0:
            problems.append(f"GPU group {g['groupName']} minReplicas {g.get('minReplicas')} replicas {g.get('replicas')}")
        if g["maxReplicas"] < 1 and _gpus(g) == 1:
            problems.append(f"GPU group {g['groupName']} can never scale up")
    return problems


def kuberay_spec(name: str) -> tuple[dict, dict]:
    doc = load(f"kuberay/{name}")
    return doc, (doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"])


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_cluster_autoscales_gpus_from_zero_with_token_auth(name):
    doc, spec = kuberay_spec(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    assert spec["rayVersion"] == importlib.metadata.version("ray")
    assert raycluster_problems(spec) == []


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["workerGroupSpecs"][0].update(minReplicas=1), "minReplicas 1"),
        (lambda s: s.pop("authOptions"), "token authentication off"),
        (lambda s: _containers(s["workerGroupSpecs"][1])[0]["env"].append({"name": "RAY_AUTH_MODE", "value": "disabled"}), "RAY_AUTH_MODE=disabled"),
        (lambda s: s.update(enableInTreeAutoscaling=False), "autoscaler off"),
        (lambda s: s["headGroupSpec"].update(serviceType="LoadBalancer"), "exposed"),
        (lambda s: s["headGroupSpec"]["template"]["spec"].pop("securityContext"), "head: pod may run as root"),
        (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["securityContext"].update(runAsUser=0), "may run as root"),
        (lambda s: _containers(s["workerGroupSpecs"][1])[0]["securityContext"].update(allowPrivilegeEscalation=True),
         "may escalate privileges"),
        (lambda s: _containers(s["workerGroupSpecs"][2])[0]["securityContext"]["capabilities"].update(drop=[]),
         "keeps Linux capabilities"),
    ],
)
def test_kuberay_check_catches_a_bad_manifest(mutate, expected):
    _, spec = kuberay_spec("raycluster.yaml")
    spec = copy.deepcopy(spec)
    mutate(spec)
    assert any(expected in p for p in raycluster_problems(spec))


def test_network_policy_admits_only_the_clusters_own_pods():
    policy = load("kuberay/networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    ray_pods = {"matchExpressions": [{"key": "ray.io/cluster", "operator": "Exists"}]}
    assert policy["spec"]["podSelector"] == ray_pods  # every Ray pod KubeRay creates
    rules = policy["spec"]["ingress"]
    open_rules = [r for r in rules if "ports" not in r]
    assert open_rules == [{"from": [{"podSelector": ray_pods}]}]  # all ports: the Ray pods themselves only
    for rule in rules:
        if "ports" in rule:  # anyone else: the job API at most, never GCS (6379) or the client port (10001)
            assert [p["port"] for p in rule["ports"]] == [8265]
            assert all("ipBlock" not in peer for peer in rule["from"]) and rule["from"]


def test_gcp_opens_ssh_only_from_a_configured_range():
    config = load("gcp.yaml")
    for name, node in config["available_node_types"].items():
        assert node["node_config"]["tags"]["items"] == ["rayssl-ssh"], name
    header = (CLUSTER / "gcp.yaml").read_text().split("cluster_name:")[0]
    rule = " ".join(line.lstrip("# ").rstrip("\\ ") for line in header.splitlines() if "firewall-rules" in line or "--" in line)
    assert "--rules=tcp:22" in rule and '--source-ranges="$SSH_SOURCE_RANGE"' in rule and "--target-tags=rayssl-ssh" in rule
    assert "0.0.0.0/0" not in header.split("SSH_SOURCE_RANGE=")[1].splitlines()[0].split("#")[0]


@pytest.mark.parametrize("name, job", [("rayjob-pretrain.yaml", "pretrain"), ("rayjob-sweep.yaml", "tune")])
def test_rayjobs_shut_down_and_carry_a_runtime_env(name, job):
    doc, _ = kuberay_spec(name)
    spec = doc["spec"]
    assert pod_security_problems("submitter", spec["submitterPodTemplate"]["spec"]) == []
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)  # Ray's own validation of the fields
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1] == f"/home/ray/rayssl/jobs/{job}.py"  # the image's checkout


def test_pretrain_rayjob_entrypoint_is_a_valid_gpu_config():
    doc, _ = kuberay_spec("rayjob-pretrain.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])[2:]
    preset = argv[argv.index("--preset") + 1]
    overrides = [a for a in argv if "=" in a]
    cfg = load_config(PretrainConfig, "pretrain", preset=preset, overrides=overrides)
    assert cfg.scale.use_gpu is True and cfg.run.storage_path.startswith("s3://")


def test_sweep_rayjob_entrypoint_is_a_valid_sweep_on_the_shared_volume():
    from rayssl.config import SweepConfig

    doc, spec = kuberay_spec("rayjob-sweep.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])[2:]
    task = argv[argv.index("--task") + 1]
    cfg = load_config(SweepConfig, "tune", preset=task, overrides=[a for a in argv if "=" in a])
    assert cfg.num_samples == 32 and cfg.finetune["data"]["source"].startswith("msd:s3://")
    # the sweep directory is on the volume every pod mounts
    for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        mounts = {m["mountPath"] for c in _containers(g) for m in c.get("volumeMounts", [])}
        assert any(cfg.storage_path.startswith(m) for m in mounts), g.get("groupName", "head")


# ---------------------------------------------------------------------------------------------------
# Presets -> GPUs: every GPU preset fits the node types of every cluster config.


def node_types(name: str) -> dict[str, tuple[float, float, int]]:
    """``{type: (CPUs, GPUs, max count)}`` of the worker node types / groups a config can add."""
    if name in LAUNCHERS:
        cfg = load(name)
        return {
            n: (t["resources"].get("CPU", 0), t["resources"].get("GPU", 0), t.get("max_workers", 0))
            for n, t in cfg["available_node_types"].items()
            if n != cfg["head_node_type"]
        }
    _, spec = kuberay_spec(name)
    out = {}
    for g in spec["workerGroupSpecs"]:
        limits = _containers(g)[0]["resources"]["limits"]
        out[g["groupName"]] = (float(limits["cpu"]), _gpus(g), g["maxReplicas"])
    return out


def schedulable_workers(types: dict, cpus: float, gpus: float) -> int:
    """How many train workers of (cpus, gpus) the cluster can host once the autoscaler added every node."""
    total = 0
    for cpu, gpu, count in types.values():
        per_node = int(cpu // cpus) if cpus else 10**6
        if gpus:
            per_node = min(per_node, int(gpu // gpus))
        total += per_node * count
    return total


def gpu_presets():
    out = []
    for job, cls in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        for p in sorted((ROOT / "rayssl" / "presets" / job).glob("*.yaml")):
            cfg = load_config(cls, job, preset=p.stem)
            if cfg.scale.use_gpu or (job == "finetune" and not p.stem.startswith("tiny")):
                out.append((job, p.stem, cfg.scale))
    return out


@pytest.mark.parametrize("cluster", LAUNCHERS + ["raycluster.yaml"])
def test_every_gpu_preset_is_schedulable(cluster):
    types = node_types(cluster)
    presets = gpu_presets()
    assert {p for _, p, _ in presets} >= {"mae3d_btcv", "mae3d_brats", "unetr_btcv"}
    for job, preset, scale in presets:
        w = scale.num_workers if isinstance(scale.num_workers, int) else scale.num_workers[1]
        room = schedulable_workers(types, scale.cpus_per_worker, scale.gpus_per_worker)
        assert room >= w, f"{job} preset {preset}: {w} workers x {scale.cpus_per_worker} CPU, {scale.gpus_per_worker} GPU; {cluster} hosts {room}"


def test_schedulable_workers_by_hand():
    types = {"gpu8": (96, 8, 2), "gpu1": (8, 1, 3), "cpu": (16, 0, 4)}
    # 8 GPUs per big node x 2 nodes + 1 x 3 small ones; CPU nodes host no GPU worker
    assert schedulable_workers(types, cpus=6, gpus=1) == 16 + 3
    # 10 CPUs per worker: the 1-GPU nodes (8 CPUs) host none; a 96-CPU node hosts 8 (GPU-bound)
    assert schedulable_workers(types, cpus=10, gpus=1) == 16
    assert schedulable_workers(types, cpus=16, gpus=0) == 2 * 6 + 0 + 4


# ---------------------------------------------------------------------------------------------------
# runtime_env


def test_runtime_env_is_valid_and_uploads_no_venv_runs_or_git(tmp_path):
    from ray._private.runtime_env.packaging import create_package
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    tree = tmp_path / "repo"
    for rel in ["jobs/pretrain.py", "rayssl/cli.py", "cluster/aws.yaml", ".git/HEAD", ".venv/bin/python", ".venv-gpu/x",
                "runs/tiny/result.json", "rayssl/__pycache__/cli.cpython-311.pyc", "rayssl.egg-info/PKG-INFO"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    pkg = tmp_path / "pkg.zip"
    create_package(str(tree), pkg, include_parent_dir=False, excludes=env["excludes"], include_gitignore=True)
    names = set(zipfile.ZipFile(pkg).namelist())
    assert {"jobs/pretrain.py", "rayssl/cli.py", "cluster/aws.yaml"} <= names
    leaked = [n for n in names if n.startswith((".git", ".venv", "runs/")) or "__pycache__" in n or ".egg-info" in n]
    assert leaked == []


# ---------------------------------------------------------------------------------------------------
# scale.use_gpu unset on a cluster whose GPU node types sit at zero nodes


def test_unset_use_gpu_requests_gpus_the_launcher_config_can_add(monkeypatch, tmp_path):
    import ray
    from ray._private import state

    import rayssl.train.launch as launch

    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", lambda: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0})  # the head only: no GPU node up
    monkeypatch.setattr(launch, "_autoscaling_config_file", lambda: str(CLUSTER / "aws.yaml"))
    assert launch.autoscaler_max_gpus() == 2 * 8 + 8 * 1  # gpu_8x x 2 + gpu_1x x 8
    cfg = load_config(PretrainConfig, "pretrain", preset="tiny")
    assert cfg.scale.use_gpu is None and launch.use_gpu(cfg.scale) is True
    assert launch.use_gpu(cfg.scale.model_copy(update={"use_gpu": False})) is False

    cpu_only = load("aws.yaml")
    cpu_only["available_node_types"] = {n: t for n, t in cpu_only["available_node_types"].items() if "GPU" not in t["resources"]}
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(cpu_only))
    monkeypatch.setattr(launch, "_autoscaling_config_file", lambda: str(tmp_path / "cpu.yaml"))
    assert launch.autoscaler_max_gpus() == 0 and launch.use_gpu(cfg.scale) is False
    # Ray's reported cluster config (KubeRay, autoscaler v2) wins when it knows GPUs
    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", lambda: {"CPU": 100, "GPU": 4})
    assert launch.autoscaler_max_gpus() == 4 and launch.use_gpu(cfg.scale) is True


def test_elastic_num_workers_reach_ray_train_as_min_max(monkeypatch):
    import ray

    from rayssl.train.launch import scaling_config

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    cfg = load_config(PretrainConfig, "pretrain", preset="tiny", overrides=["scale.num_workers=[1,4]"])
    sc = scaling_config(cfg.scale, cfg.data)
    assert sc.elasticity_enabled and (sc.min_workers, sc.max_workers) == (1, 4)
    assert sc.use_gpu and sc.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
