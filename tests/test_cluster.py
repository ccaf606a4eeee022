"""cluster.yaml and cluster-local.yaml pass Ray's own launcher validation (offline)."""
import copy

import pytest
import yaml

from tests.conftest import ROOT


def launcher_config(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / name).read_text())
    config = prepare_config(copy.deepcopy(raw))  # merges the provider's defaults.yaml, like `ray up`
    validate_config(config)  # the JSON schema ray-schema.json plus Ray's cross-field checks
    return config


def test_aws_config_validates_with_gpu_workers_and_loopback_dashboard():
    config = launcher_config("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance
    assert worker["max_workers"] > worker["min_workers"]  # autoscaling
    assert "pip install -q -e /home/ray/moe-vae-pipeline" in config["setup_commands"]
    assert config["file_mounts"]["/home/ray/moe-vae-pipeline"] == "."
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    text = (ROOT / "cluster.yaml").read_text().lower()
    for secret in ("aws_secret_access_key", "aws_access_key_id", "password", "private_key:"):
        assert secret not in text


def test_local_provider_config_validates():
    config = launcher_config("cluster-local.yaml")
    assert config["provider"]["type"] == "local"
    # prepare_config turns the worker_ips into the single on-prem node type
    (workers,) = config["available_node_types"].values()
    assert workers["min_workers"] == workers["max_workers"] == len(config["provider"]["worker_ips"])
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_a_broken_config_is_rejected():
    """The validation above can fail: an unknown key is a schema error."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["min_worker"] = 1  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))
