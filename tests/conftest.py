"""Session fixtures: one real local Ray for the in-process tests; spec builders."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import s3server

ROOT = Path(__file__).resolve().parent.parent
# Before anything starts Ray: every process of the session (and every Ray worker) finds the test S3 server
# and its credentials through the standard AWS chain, and spools to a private directory.
os.environ.update(
    AWS_ACCESS_KEY_ID=s3server.ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
    AWS_ENDPOINT_URL_S3=s3server.ENDPOINT,
    AWS_REGION="us-east-1",
)
os.environ.setdefault("HPO_SPOOL_DIR", tempfile.mkdtemp(prefix="hpo-test-spool-"))
HPO = [sys.executable, "-m", "orchestrator.cli"]

BASE_SPEC = {
    "name": "t-job",
    "workload": "digits-mlp",
    "seed": 7,
    "search": {
        "algorithm": "random",
        "num_samples": 3,
        "max_concurrent": 2,
        "metric": "val_loss",
        "mode": "min",
        "space": {"lr": {"loguniform": [1.0e-3, 1.0e-1]}, "hidden": {"choice": [16, 32]}},
        "fixed": {"batch_size": 128},
    },
    "train": {"max_epochs": 3},
}


def spec_dict(**sections) -> dict:
    """BASE_SPEC with top-level keys replaced and nested mappings merged one level deep."""
    data = copy.deepcopy(BASE_SPEC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


@pytest.fixture(scope="session")
def ray_cluster():
    """A real embedded Ray shared by the in-process tests (4 logical CPUs so a DDP trial fits beside others)."""
    import ray

    from orchestrator.ray_env import start_ray

    start_ray(num_cpus=4)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback for the whole session."""
    server = s3server.WeedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


def run_hpo(*args: str, cwd: Path | str = ROOT, timeout: float = 600, env: dict | None = None):
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([*HPO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
