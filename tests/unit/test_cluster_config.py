"""cluster.yaml is a real Ray cluster-launcher config: Ray's own validator accepts it."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_validation() -> None:
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)
    assert config["provider"]["worker_ips"], "workers are declared"
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "convoy serve" in commands and "convoy api" in commands, "API replicas are started on every node"
    assert "RAY_REDIS_ADDRESS" in " ".join(config["initialization_commands"]), "GCS fault tolerance is on"
    assert any("pip install" in c and "convoy" in c for c in config["setup_commands"])
