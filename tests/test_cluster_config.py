"""cluster.yaml: valid for Ray's own cluster launcher schema, installs trainlab as the README does,
and opens no Ray port to the world."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_PORTS = (6379, 8265, 10001)


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_ray_accepts_the_cluster_config(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))   # jsonschema of ray-schema.json + Ray's own checks


def test_ray_rejects_a_broken_copy(cluster):
    """The validator is not a no-op: an unknown head node type is refused."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(cluster)
    bad["head_node_type"] = "nope"
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))


def test_gpu_workers_autoscale(cluster):
    nodes = cluster["available_node_types"]
    workers = [n for k, n in nodes.items() if k != cluster["head_node_type"]]
    assert workers and all(n["max_workers"] > n.get("min_workers", 0) for n in workers)
    assert any(n["node_config"]["InstanceType"].startswith(("g", "p")) for n in workers)


def test_only_ssh_is_open_and_not_to_the_world(cluster):
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    for r in rules:
        ports = set(range(int(r["FromPort"]), int(r["ToPort"]) + 1))
        assert ports == {22}, r
        assert all(ip["CidrIp"] != "0.0.0.0/0" for ip in r.get("IpRanges", [])), r
        assert not r.get("Ipv6Ranges"), r
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_setup_installs_like_the_readme_and_sets_tracking_and_storage(cluster):
    readme = (ROOT / "README.md").read_text()
    setup = "\n".join(cluster["setup_commands"])
    assert "pip install torch==2.13.0" in readme and "pip install torch==2.13.0" in setup
    assert re.search(r"pip install -e \.", setup)
    assert "MLFLOW_TRACKING_URI=" in setup and "TRAINLAB_STORAGE=s3://" in setup


def test_every_node_runs_ray_token_auth_and_no_credential_is_in_the_file(cluster):
    for cmds in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        starts = [c for c in cmds if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), starts
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token is copied, not written here
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"(PASSWORD|TOKEN|SECRET[A-Z_]*)=[^\s'\"]", text), "a credential value in cluster.yaml"
    assert "secrets.env" in " ".join(cluster["setup_commands"])  # credentials come from a mounted env file
