"""What a trial needs besides its hyperparameters: built by the run (execution/runner.py), shipped to every worker."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrialPlan:
    """Everything a trial needs besides its hyperparameters; small and picklable, shipped to every worker."""

    workload: str
    job_seed: int
    fixed: Mapping[str, Any]
    max_epochs: int
    workers: int
    use_gpu: bool
    cpus_per_worker: float
    checkpoints_to_keep: int
    metric: str
    mode: str
    results_uri: str  # checkpoints go to <results_uri>/checkpoints/<trial_id>/ through the run's store
    storage_options: Any  # S3Options (endpoint, region, addressing; never credentials)
    train_storage: str  # local staging for the Ray Train runs of multi-worker trials (controller state only)
    precision: str = "fp32"  # bf16: autocast on GPUs (ctx.autocast())
    resources_per_worker: Mapping[str, float] = dataclasses.field(
        default_factory=dict
    )  # custom Ray resources
    accelerator_type: str | None = None  # Ray's accelerator_type (A100, ...), GPU workers only
    gpus_per_worker: float = 1.0  # with use_gpu (train.gpus_per_worker)
    resume: bool = False  # `hpo resume`: every trial first looks for a checkpoint to continue from
    pool: str = ""  # multi-worker trials: the run's pool of warm worker groups (launch/pool/)
    # PBT's perturbation_interval: the report of every such epoch leaves only once its checkpoint is in the
    # store (a remote store's writes are uploaded behind training), for the driver copies it at the step
    stored_every: int = 0


# Test-only: set on the fake GPU nodes of cluster/local-fake.yaml, whose "GPUs" are Ray resources without a
# device. Trials that asked for a GPU then train on the CPU. Never set it on a real cluster.
FAKE_GPU_ENV = "HPO_FAKE_GPU"


def fake_gpu() -> bool:
    return os.environ.get(FAKE_GPU_ENV) == "1"
