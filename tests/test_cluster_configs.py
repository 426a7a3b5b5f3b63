"""Shipped cluster configs pass Ray's own autoscaler validator and keep the shape users rely on."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import ROOT

LAUNCHER = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in LAUNCHER if p.name in ("aws.yaml", "gcp.yaml")], ids=lambda p: p.name)
def test_launcher_config_passes_rays_validator(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")  # the head runs no trials
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert {t["resources"]["GPU"] for t in gpu_types.values()} >= {1, 8}  # a 1-GPU and a multi-GPU type
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types.values())
    assert 0 < prepared["idle_timeout_minutes"] <= 30
    assert "hpo" in prepared["docker"]["image"]
