"""cluster.yaml against Ray's own autoscaler schema and the project's expectations."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(load()))   # defaults filled as `ray up` does, then the schema


def test_schema_check_is_live():
    """The validator does reject a broken config (so the test above can fail)."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    broken = load()
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


def test_head_takes_no_tasks_and_gpu_workers_autoscale():
    cfg = load()
    nodes = cfg["available_node_types"]
    assert nodes[cfg["head_node_type"]]["resources"]["CPU"] == 0
    gpu = nodes["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] == 1 and gpu["resources"]["CPU"] >= 4
    assert "2.60" in cfg["docker"]["image"] and cfg["docker"]["image"].endswith("-gpu")
