"""Session fixtures: one real local Ray for the in-process tests; spec builders."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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

    from orchestrator.runner import start_ray

    start_ray(num_cpus=4)
    yield
    ray.shutdown()


def run_hpo(*args: str, cwd: Path | str = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([*HPO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
