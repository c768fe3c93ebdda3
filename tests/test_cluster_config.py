"""The cluster side: cluster.yaml, Dockerfile and .dockerignore.

cluster.yaml is checked with Ray's OWN validation, the installed Ray's:

* ``ray.autoscaler._private.util.prepare_config`` + ``validate_config``: what ``ray up``
  runs on the laptop (``commands._bootstrap_config`` / ``create_or_update_cluster``) before
  it talks to AWS. ``validate_config`` validates against the installed
  ``ray/autoscaler/ray-schema.json`` (jsonschema) and adds the cross-field checks
  (head_node_type in available_node_types, sum of min_workers <= max_workers, ...).
* ``ray.autoscaler.v2.instance_manager.config.AutoscalingConfig``: how the head's
  autoscaler (v2, the default for ``ray up`` since Ray 2.50) loads the same file, which
  also tells which docker options / resources each node type really gets.

Nothing here contacts AWS: the steps of ``ray up`` that do (the AWS provider's
``fillout_available_node_types_resources`` and ``bootstrap_config``, which need boto3 and
credentials) are left out. That is also why every node type declares its resources
explicitly: the schema requires them when AWS auto-detection does not run.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config, with_envs
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig, Provider

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# What the instance types really have. Explicit `resources` override AWS auto-detection,
# so a wrong number here would make Ray over- or under-schedule trials on that node.
INSTANCE_SPECS = {  # InstanceType: (vCPUs, GPUs)
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.2xlarge": (8, 1),
    "g6.12xlarge": (48, 4),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}


def ray_validate(raw: dict) -> dict:
    """``ray up``'s own checks, minus the AWS calls. Raises on an invalid config."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return ray_validate(raw)


@pytest.fixture(scope="module")
def autoscaling(raw) -> AutoscalingConfig:
    return AutoscalingConfig(copy.deepcopy(raw), skip_content_hash=True)


def worker_types(cfg: dict) -> dict:
    return {
        name: spec
        for name, spec in cfg["available_node_types"].items()
        if name != cfg["head_node_type"]
    }


def gpu_types(cfg: dict) -> dict:
    return {n: s for n, s in worker_types(cfg).items() if s["resources"].get("GPU", 0) > 0}


def dockerfile_from_images() -> list[str]:
    images = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", line, re.IGNORECASE)
        if m:
            images.append(m.group(1))
    return images


def ecr_registry(text: str) -> str | None:
    m = re.search(r"\b([\w-]+\.dkr\.ecr\.[\w-]+\.amazonaws\.com)\b", text)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- Ray's validation


def test_ray_validates_cluster_yaml(prepared, autoscaling):
    assert prepared["cluster_name"] == "ptray"
    assert autoscaling.provider == Provider.AWS
    assert autoscaling.get_head_node_type() == prepared["head_node_type"]


@pytest.mark.parametrize(
    "mutate, bad_key",
    [
        # The classic typo: a misspelled top-level key must not be silently ignored.
        (lambda c: c.__setitem__("max_worker", c.pop("max_workers")), "max_worker"),
        (lambda c: c["docker"].__setitem__("run_option", c["docker"].pop("run_options")), "run_option"),
        (
            lambda c: next(iter(gpu_types(c).values())).__setitem__("min_worker", 0),
            "min_worker",
        ),
    ],
    ids=["top-level", "docker", "node-type"],
)
def test_ray_validation_rejects_misspelled_keys(raw, mutate, bad_key):
    """Proves the validator above really runs: the same file with one typo is refused."""
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError, match=f"'{bad_key}' was unexpected"):
        ray_validate(broken)
    with pytest.raises(jsonschema.ValidationError, match=f"'{bad_key}' was unexpected"):
        AutoscalingConfig(broken, skip_content_hash=True)


# --------------------------------------------------------------------------- node types


def test_head_runs_no_trials(prepared, autoscaling):
    head = prepared["head_node_type"]
    # Ray's documented way to keep tasks/actors off the head: advertise 0 CPUs.
    assert prepared["available_node_types"][head]["resources"].get("CPU") == 0
    assert prepared["available_node_types"][head]["resources"].get("GPU", 0) == 0
    assert autoscaling.get_node_resources(head).get("CPU") == 0
    # The head node type never scales out as a worker.
    assert prepared["available_node_types"][head]["max_workers"] == 0


def test_gpu_worker_types_autoscale_from_zero(prepared, autoscaling):
    gpus = gpu_types(prepared)
    assert gpus, "no worker node type provides a GPU"
    for name, spec in worker_types(prepared).items():
        assert spec.get("min_workers", 0) == 0, f"{name} keeps idle nodes alive"
        assert 1 <= spec["max_workers"] <= prepared["max_workers"], name
    assert prepared["idle_timeout_minutes"] > 0
    configs = autoscaling.get_node_type_configs()
    for name in gpus:
        assert configs[name].min_worker_nodes == 0
        assert configs[name].resources["GPU"] >= 1


def test_declared_resources_match_the_instance_types(prepared):
    for name, spec in worker_types(prepared).items():
        itype = spec["node_config"]["InstanceType"]
        assert itype in INSTANCE_SPECS, f"{name}: add {itype}'s vCPUs/GPUs to INSTANCE_SPECS"
        cpus, gpus = INSTANCE_SPECS[itype]
        assert spec["resources"].get("CPU") == cpus, f"{name} ({itype}) has {cpus} vCPUs"
        assert spec["resources"].get("GPU", 0) == gpus, f"{name} ({itype}) has {gpus} GPUs"


def test_provider(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"
    assert prepared["provider"]["cache_stopped_nodes"] is False


# --------------------------------------------------------------------------- docker


def test_docker_block(prepared, autoscaling):
    docker = prepared["docker"]
    image = docker.get("image", "")
    assert image, "docker.image must be set (the image built from ./Dockerfile)"
    assert "ray-ml" not in image
    assert docker.get("container_name")
    assert any("--ulimit nofile=65536:65536" in opt for opt in docker["run_options"])
    # Every GPU node gets an explicit /dev/shm size (DeepSpeed/NCCL + Ray's object store),
    # as the autoscaler actually merges it for that node type.
    for name in gpu_types(prepared):
        eff = autoscaling.get_docker_config(name)
        opts = eff.get("run_options", []) + eff.get("worker_run_options", [])
        assert any(opt.startswith("--shm-size") for opt in opts), name
        assert eff["image"] == image


def test_ecr_login_matches_the_image_registry(prepared):
    """The image's registry is a placeholder; both places must be replaced together."""
    registry = ecr_registry(prepared["docker"]["image"])
    if registry is None:  # not an ECR image: nothing to log in to
        return
    logins = [c for c in prepared["initialization_commands"] if "docker login" in c]
    assert logins, "a private ECR image needs `docker login` in initialization_commands"
    assert {ecr_registry(c) for c in logins} == {registry}
    region = registry.split(".")[3]
    assert region == prepared["provider"]["region"]


def test_no_setup_at_node_start(prepared):
    """The image carries the code; Ray's AWS default setup commands must not sneak in."""
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key
    assert prepared["file_mounts"] == {}


def test_dockerfile_base_image_matches_installed_ray():
    images = dockerfile_from_images()
    assert len(images) == 1, images
    m = re.fullmatch(r"rayproject/ray:(\d+)\.(\d+)\.(\d+)-py3\d+-(cu1\d\d|gpu)", images[0])
    assert m, f"expected a rayproject/ray:X.Y.Z-py3NN-cuNNN GPU image, got {images[0]}"
    # The cluster's Ray must match the Ray that runs `ray up` / `ray job submit` here.
    installed = tuple(int(x) for x in ray.__version__.split(".")[:2])
    assert (int(m.group(1)), int(m.group(2))) == installed, (images[0], ray.__version__)


def test_dockerfile_installs_project_and_caches_deepspeed_ops(prepared):
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install[^\n]*-e \.", text)
    for path in ("pyproject.toml", "ptray/", "experiments/"):
        assert re.search(rf"^COPY\b[^\n]*\s{re.escape(path)}", text, re.MULTILINE), path
    m = re.search(r"TORCH_EXTENSIONS_DIR=(\S+)", text)
    assert m, "TORCH_EXTENSIONS_DIR must be set so DeepSpeed op builds are reused"
    ext_dir = m.group(1)
    assert not ext_dir.startswith("/tmp")
    # cluster.yaml bind-mounts a host directory exactly there.
    mounts = [o for o in prepared["docker"]["run_options"] if o.startswith("-v ")]
    assert any(o.split(":")[1] == ext_dir for o in mounts), (ext_dir, mounts)


def test_dockerignore():
    entries = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", "outputs", "ray_results", ".git"):
        assert needed in entries, needed


# --------------------------------------------------------------------------- start commands


def _ray_start(commands: list[str], marker: str) -> str:
    found = [c for c in commands if marker in c]
    assert len(found) == 1, f"expected one command with {marker!r}: {commands}"
    return found[0]


def _exported_before(cmd: str, var: str, before: str) -> str:
    m = re.search(rf"export {var}=([^;\s]+);", cmd)
    assert m, f"{var} is not exported in: {cmd}"
    assert m.start() < cmd.index(before), f"{var} must be exported before {before!r}"
    return m.group(1)


def test_head_starts_mlflow_server_and_ray(prepared):
    cmds = prepared["head_start_ray_commands"]
    server = _ray_start(cmds, "mlflow server")
    # No authentication: only the head's loopback may reach it (the driver there, the UI through an SSH tunnel).
    assert re.search(r"--host[ =]127\.0\.0\.1\b", server)
    port = re.search(r"--port[ =](\d+)", server).group(1)
    assert port == "5000"
    backend = re.search(r"--backend-store-uri[ =](\S+)", server).group(1)
    assert backend.startswith(("sqlite:", "postgresql")), backend  # no plain file store
    if backend.startswith("sqlite:"):
        assert re.search(r"--workers[ =]1\b", server), "SQLite needs a single writer"
    assert "--serve-artifacts" in server and "--artifacts-destination" in server
    # The server must outlive the launcher's `docker exec` session.
    assert "nohup" in server and server.rstrip().endswith("&")

    head_start = _ray_start(cmds, "ray start --head")
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    uri = _exported_before(head_start, "MLFLOW_TRACKING_URI", "ray start")
    # Only the Tune driver logs to MLflow, and `ray job submit` runs it on the head: the loopback server.
    assert uri == f"http://127.0.0.1:{port}"
    assert cmds.index(server) < cmds.index(head_start)


def test_workers_join_the_head_and_never_talk_to_mlflow(prepared):
    cmds = prepared["worker_start_ray_commands"]
    start = _ray_start(cmds, "ray start --address=")
    assert "--address=$RAY_HEAD_IP:6379" in start
    # Trials log nothing to MLflow, and the server is on the head's loopback: a URI here could only point nowhere.
    assert "MLFLOW_TRACKING_URI" not in " ".join(cmds)


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_no_web_service_listens_on_every_interface(prepared, key):
    """The dashboard (its job API runs any command) and the MLflow server (no authentication) listen on loopback
    only; SSH port-forwarding (`ray dashboard cluster.yaml`, docs/cluster.md) reaches them."""
    cmds = " ".join(prepared[key])
    for flag in ("--host", "--dashboard-host", "--ray-client-server-host", "--dashboard-agent-host"):
        for value in re.findall(rf"{flag}[ =](\S+)", cmds):
            assert value in ("127.0.0.1", "localhost"), f"{flag} {value} in {key}"
    assert not re.search(r"0\.0\.0\.0|\[::\]|(?<![\w:])::(?![\w:])", cmds), cmds
    if key == "head_start_ray_commands":
        assert "--dashboard-host=127.0.0.1" in cmds


@pytest.mark.parametrize(
    "key", ["initialization_commands", "head_start_ray_commands", "worker_start_ray_commands"]
)
def test_commands_are_valid_bash(prepared, key):
    """Folded YAML scalars make quoting mistakes easy; `bash -n` parses without running."""
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the shell syntax"
    for cmd in prepared[key]:
        res = subprocess.run([bash, "-n", "-c", cmd], capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd}\n{res.stderr}"


def test_ray_start_really_gets_the_tracking_uri(prepared, tmp_path):
    """Run the start commands with a stub `ray` on PATH, the way the launcher does
    (``with_envs`` prepends ``export RAY_HEAD_IP=...;`` for workers), and check what
    `ray start` sees: raylets hand their environment to every trial and job driver. The head's
    (where `ray job submit` runs the driver) points at the loopback server; the workers' at none."""
    bash = shutil.which("bash")
    assert bash
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text('#!/bin/sh\necho "ray $1 MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"\n')
    (bin_dir / "ray").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(cmd: str) -> str:
        res = subprocess.run([bash, "-c", f"({cmd})"], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout

    head_start = _ray_start(prepared["head_start_ray_commands"], "ray start --head")
    assert "ray start MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in run(head_start)

    worker_start = _ray_start(prepared["worker_start_ray_commands"], "ray start --address=")
    [launched] = with_envs([worker_start], {"RAY_HEAD_IP": "10.0.0.5"})
    assert "ray start MLFLOW_TRACKING_URI=\n" in run(launched)
