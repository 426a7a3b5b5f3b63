"""Shipped cluster configs pass Ray's own autoscaler validator and keep the shape users rely on."""

from __future__ import annotations

import copy

import pytest
import ray_internals
import yaml
from conftest import ROOT

LAUNCHER = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.mark.parametrize(
    "path", [p for p in LAUNCHER if p.name in ("aws.yaml", "gcp.yaml")], ids=lambda p: p.name
)
def test_launcher_config_passes_rays_validator(path):

    config = yaml.safe_load(path.read_text())
    prepared = ray_internals.validate_cluster_config(copy.deepcopy(config))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")  # the head runs no trials
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert {t["resources"]["GPU"] for t in gpu_types.values()} >= {1, 8}  # a 1-GPU and a multi-GPU type
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types.values())
    assert 0 < prepared["idle_timeout_minutes"] <= 30
    assert "hpo" in prepared["docker"]["image"]


def _cluster_specs():
    for path in sorted((ROOT / "cluster" / "kuberay").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        yield path, doc, (doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"])


def test_kuberay_manifests_autoscale_gpu_workers_from_zero():
    """No CRD schema is available offline: check the fields KubeRay needs for what we promise."""
    import tomllib

    ray_pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("ray[")
    )
    kinds = set()
    for path, doc, cluster in _cluster_specs():
        kinds.add(doc["kind"])
        assert doc["apiVersion"] == "ray.io/v1", path.name
        assert ray_pin.endswith("==" + cluster["rayVersion"]) and cluster["enableInTreeAutoscaling"] is True
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
            container = group["template"]["spec"]["containers"][0]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert "hpo" in container["image"]
        for container in [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]:
            assert "secretRef" in container["envFrom"][0]  # credentials from a Secret, not the spec
    assert kinds == {"RayCluster", "RayJob"}
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    argv = job["spec"]["entrypoint"].split()
    assert argv[:2] == ["hpo", "run"] and (ROOT / argv[2].removeprefix("/opt/hpo/")).is_file()
