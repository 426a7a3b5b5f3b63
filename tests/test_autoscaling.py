"""The local autoscaling config (Ray's fake multi-node provider) and the test-only fake-GPU setting."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from conftest import ROOT, spec_dict
from rayhead import RayHead

from orchestrator.execution import ray_compat
from orchestrator.results import load_trials
from orchestrator.train.plan import FAKE_GPU_ENV


def test_shipped_fake_config_passes_rays_schema():

    config = yaml.safe_load((ROOT / "cluster" / "local-fake.yaml").read_text())
    ray_compat.validate_cluster_config(config, prepare=False)  # prepare needs an example.yaml the wheel lacks
    gpu = config["available_node_types"]["gpu-node"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1
    assert not config["available_node_types"][config["head_node_type"]]["resources"].get("GPU")


def test_fake_gpu_setting_trains_on_cpu_only_when_set(monkeypatch):
    import torch
    from conftest import trial_plan

    from orchestrator.train.trial import device_for

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv(FAKE_GPU_ENV, "1")
    assert device_for(trial_plan(use_gpu=True), 0) == "cpu"
    monkeypatch.delenv(FAKE_GPU_ENV)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        device_for(trial_plan(use_gpu=True), 0)


def _nodes(head) -> list[dict]:
    return head.get("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]


def _alive_gpu_nodes(head) -> list[str]:
    return [
        n["node_id"]
        for n in _nodes(head)
        if n["state"] == "ALIVE" and n.get("resources_total", {}).get("GPU")
    ]


def _wait_for(predicate, timeout_s: float, what: str, head):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; see {head.root.parent}")


@pytest.mark.slow
def test_fake_cluster_adds_gpu_nodes_runs_trials_on_them_and_removes_them(tmp_path, cli):
    """The shipped local-fake.yaml on a real head: GPU workers start from zero when GPU trials wait, the
    trials run on them, and the nodes go after the idle timeout."""
    config = yaml.safe_load((ROOT / "cluster" / "local-fake.yaml").read_text())
    head = RayHead(
        tmp_path / "ray",
        num_cpus=config["available_node_types"]["ray.head.default"]["resources"]["CPU"],
        extra_env={
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            FAKE_GPU_ENV: "1",
            # the fake provider knows the head by this id (its workers are ...00001, ...)
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": ray_compat.fake_head_node_id(),
        },
    )
    config["provider"]["gcs_address"] = f"127.0.0.1:{head.gcs_port}"
    config_path = tmp_path / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    head.extra_args.append(f"--autoscaling-config={config_path}")
    head.start()
    try:
        assert _alive_gpu_nodes(head) == []  # min_workers: 0 -> no GPU node before the job
        spec_path = tmp_path / "gpu-job.yaml"
        spec_path.write_text(
            yaml.safe_dump(
                spec_dict(
                    name="fake-gpu",
                    storage=str(tmp_path / "results"),
                    train={"max_epochs": 2, "use_gpu": True},
                    search={"num_samples": 3, "max_concurrent": 2},
                )
            )
        )
        proc = cli(
            "submit", str(spec_path), "--address", head.url, "--follow", env={"RAY_AUTH_TOKEN": head.token}
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert "SUCCEEDED" in proc.stderr
        logs = cli(
            "logs",
            proc.stdout.strip().splitlines()[-1],
            "--address",
            head.url,
            env={"RAY_AUTH_TOKEN": head.token},
        )
        summary = json.loads(logs.stdout.strip().splitlines()[-1])
        assert summary["num_trials"] == 3 and summary["statuses"] == {"completed": 3}, summary
        trials = load_trials(summary["results_uri"]).to_pandas()
        gpu_nodes = {n["node_id"] for n in _nodes(head) if n.get("resources_total", {}).get("GPU")}
        assert set(trials["node_id"]) <= gpu_nodes and gpu_nodes, (trials["node_id"].tolist(), gpu_nodes)
        print(f"GPU nodes used: {len(gpu_nodes)}; trial retries: {trials['retries'].tolist()}")
        assert _wait_for(lambda: _alive_gpu_nodes(head) == [], 180, "the idle GPU nodes to be removed", head)
    finally:
        head.stop()
