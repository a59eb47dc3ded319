"""cluster.yaml (AWS) and cluster.local.yaml (on-prem) pass Ray's own cluster-config checks:
`prepare_config` (defaults merged, setup commands merged, node types filled) + `validate_config`
(the autoscaler's JSON schema), and the AWS file's AMI passes Ray's AMI step. No provider bootstrap
(that would call AWS); no network is used — socket connections are refused for the duration of the check.

deploy/kuberay/rayjob.yaml and the Dockerfile: their commands are real `raydistill` commands whose
experiment validates, the manifest has what KubeRay's RayJob (ray.io/v1) requires, and
it validates against the RayJob CRD's OpenAPI schema with jsonschema: KubeRay's own, vendored in
tests/data/kuberay (no pip package ships it), or the one RAYDISTILL_RAYJOB_CRD points to."""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("jsonschema")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster config check tried to open a connection: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def check(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_aws_cluster_file(no_network):
    raw = load("cluster.yaml")
    config = check(raw)
    assert config["provider"]["type"] == "aws"
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith("g5.")
    assert workers["resources"]["GPU"] >= 1 and workers["max_workers"] >= 1
    assert config["head_node_type"] == "head"
    assert "/home/ubuntu/raydistill" in config["file_mounts"]
    assert any("pip install -e /home/ubuntu/raydistill" in c for c in config["worker_setup_commands"])
    assert any("pip install -e /home/ubuntu/raydistill" in c for c in config["head_setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=disabled ray start" in c for c in config[key])


def test_local_cluster_file(no_network):
    raw = load("cluster.local.yaml")
    config = check(raw)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and len(config["provider"]["worker_ips"]) == 2
    assert config["auth"]["ssh_user"]
    (node_type,) = config["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == 2
    assert any("pip install -e /home/ubuntu/raydistill" in c for c in config["worker_setup_commands"])


def test_validation_rejects_a_broken_file(no_network):
    """The check is not vacuous: an unknown top-level field or a wrong type fails the schema."""
    import jsonschema
    raw = load("cluster.yaml")
    raw["max_wokers"] = 2
    with pytest.raises(jsonschema.ValidationError):
        check(raw)
    raw = load("cluster.yaml")
    raw["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        check(raw)


def test_aws_image_is_current_dlami_and_passes_rays_ami_step(no_network):
    """Every node names the current Ubuntu 22.04 DLAMI through AWS's public SSM parameter (EC2 resolves
    it at launch), and Ray's own AMI step keeps it instead of substituting its built-in table."""
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami
    config = check(load("cluster.yaml"))
    _check_ami(config)
    for node in config["available_node_types"].values():
        image = node["node_config"]["ImageId"]
        assert re.fullmatch(r"resolve:ssm:/aws/service/deeplearning/ami/x86_64/[a-z0-9.-]*ubuntu-22\.04/latest/ami-id",
                            image), image
        assert image not in DEFAULT_AMI.values()
    assert any("pip" in c and "apt-get install -y python3-pip" in c for c in config["setup_commands"])


# ---- Kubernetes: deploy/kuberay/rayjob.yaml and the Dockerfile -------------------------------------

def rayjob() -> dict:
    return load("deploy/kuberay/rayjob.yaml")


def cli_args(argv: list):
    """argv after `raydistill`, parsed by the CLI's own parser (SystemExit on an unknown command/flag)."""
    from raydistill.cli import build_parser
    assert argv[0] == "raydistill", argv
    return build_parser().parse_args(argv[1:])


def test_rayjob_runs_a_valid_raydistill_command():
    from raydistill.cli import _load, cmd_run
    args = cli_args(shlex.split(rayjob()["spec"]["entrypoint"]))
    assert args.func is cmd_run and args.backend == "ray"
    exp = _load(args)   # the experiment with every --set: validated, as `raydistill run` does first
    assert exp.ray.address == "auto" and exp.ray.use_gpu and exp.ray.workers == 2
    assert exp.output.dir.startswith("s3://")   # pods share no disk: a URI (or a mounted volume, see the file)


def test_rayjob_has_what_kuberay_requires():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] in ("K8sJobMode", "HTTPMode")
    cluster = spec["rayClusterSpec"]
    from importlib.metadata import version
    assert cluster["rayVersion"] == version("ray")
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())   # KubeRay: a map of strings
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    workers = cluster["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    exp_workers = cli_args(shlex.split(spec["entrypoint"])).workers
    assert sum(g["replicas"] for g in workers) >= exp_workers   # one GPU pod per Ray Train worker
    assert len(images) == 1                                     # the Dockerfile's image everywhere


def strict(schema):
    """Unknown fields become errors (`kubectl apply --validate=strict`), except where the CRD keeps them."""
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def rayjob_schema() -> dict:
    """KubeRay's RayJob v1 OpenAPI schema: RAYDISTILL_RAYJOB_CRD (a CRD YAML, e.g. `kubectl get crd
    rayjobs.ray.io -o yaml`) when set, else the copy in tests/data/kuberay (see its SOURCE.md)."""
    path = os.environ.get("RAYDISTILL_RAYJOB_CRD")
    if path:
        crd = yaml.safe_load(Path(path).read_text())
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        return v1["schema"]["openAPIV3Schema"]
    import gzip
    vendored = json.loads(gzip.decompress((ROOT / "tests" / "data" / "kuberay" / "rayjob_v1_schema.json.gz").read_bytes()))
    assert (vendored["group"], vendored["kind"], vendored["version"]) == ("ray.io", "RayJob", "v1")
    return vendored["openAPIV3Schema"]


def test_rayjob_validates_against_the_kuberay_crd():
    import jsonschema
    validator = jsonschema.Draft7Validator(strict(rayjob_schema()))
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(rayjob())]
    assert not errors, errors
    broken = rayjob()
    broken["spec"]["shutdownAfterJobFinsh"] = True              # the check is not vacuous
    assert list(validator.iter_errors(broken))


def test_dockerfile_builds_on_ray_and_runs_a_real_command():
    text = (ROOT / "Dockerfile").read_text()
    from importlib.metadata import version
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base.startswith(f"rayproject/ray:{version('ray')}-")   # the Ray the cluster and the submitter run
    assert re.search(r'^RUN pip install [^\n]*"\.\[mlflow,wandb\]"', text, flags=re.M)
    (cmd,) = re.findall(r"^CMD\s+(\[.*\])\s*$", text, flags=re.M)
    from raydistill.cli import cmd_run
    args = cli_args(json.loads(cmd))
    assert args.func is cmd_run
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["raydistill"] == "raydistill.cli:main"
    assert "mlflow" in project["optional-dependencies"] and "wandb" in project["optional-dependencies"]
    head = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].endswith(f"raydistill:{project['version']}")   # the tag the Dockerfile's comment builds
