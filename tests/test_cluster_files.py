"""cluster.yaml (AWS) and cluster.local.yaml (on-prem) pass Ray's own cluster-config checks:
`prepare_config` (defaults merged, setup commands merged, node types filled) + `validate_config`
(the autoscaler's JSON schema). No provider bootstrap (that would call AWS); no network is used —
socket connections are refused for the duration of the check."""
from __future__ import annotations

import copy
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
