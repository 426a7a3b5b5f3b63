"""The local autoscaling config (Ray's fake multi-node provider) and the test-only fake-GPU setting."""

from __future__ import annotations

import pytest
import yaml

from conftest import ROOT


def test_shipped_fake_config_passes_rays_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "cluster" / "local-fake.yaml").read_text())
    validate_config(config)  # prepare_config needs an example.yaml the wheel does not ship
    gpu = config["available_node_types"]["gpu-node"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1
    assert not config["available_node_types"][config["head_node_type"]]["resources"].get("GPU")


def test_fake_gpu_setting_trains_on_cpu_only_when_set(monkeypatch):
    import torch

    from orchestrator.trial import FAKE_GPU_ENV, _device
    from test_training import _plan

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv(FAKE_GPU_ENV, "1")
    assert _device(_plan(use_gpu=True), 0) == "cpu"
    monkeypatch.delenv(FAKE_GPU_ENV)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _device(_plan(use_gpu=True), 0)
