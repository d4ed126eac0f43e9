"""cluster.yaml against the cluster-config JSON schema that ships inside the installed `ray` package."""
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.conftest import REPO

SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())


def cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    jsonschema.validate(cluster_config(), SCHEMA)


def test_workers_are_a100_nodes_that_install_the_gpu_extras():
    config = cluster_config()
    worker = config["available_node_types"]["a100_worker"]
    assert worker["node_config"]["InstanceType"] == "p4d.24xlarge"  # 8x A100, the paper's node
    assert worker["max_workers"] <= config["max_workers"]
    assert any("rlthf[gpu" in command for command in config["setup_commands"])


def test_the_schema_check_catches_a_bad_key():
    config = cluster_config()
    config["available_node_types"]["a100_worker"]["max_wrokers"] = 2
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        jsonschema.validate(config, SCHEMA)
