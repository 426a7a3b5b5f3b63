"""The Ray Train TorchTrainer of multi-worker trials: the resident groups of pool/ and hpo reproduce's
fresh one are both built here, so both train with the same backend, resources and settings."""

from __future__ import annotations

import os
from collections.abc import Callable

from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from orchestrator.ray_support.ray_compat import TRAIN_ENV
from orchestrator.train.plan import TrialPlan, fake_gpu


def ddp_trainer(
    worker: Callable[[dict], None], loop_config: dict, plan: TrialPlan, *, run_name: str, callbacks=()
):
    """A TorchTrainer for `worker(loop_config)` on plan.workers workers (gloo on CPU, NCCL on GPU)."""
    # heavy: Ray Train's torch stack costs 2.3 s to import; 1-worker trials never pay it
    from ray.train.torch import TorchConfig, TorchTrainer

    for name, value in TRAIN_ENV.items():  # read by fit() in this process, which passes it to the controller
        os.environ.setdefault(name, value)
    return TorchTrainer(
        worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu and not fake_gpu() else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.use_gpu,
            resources_per_worker={
                "CPU": plan.cpus_per_worker,
                **plan.resources_per_worker,
                **({"GPU": plan.gpus_per_worker} if plan.use_gpu else {}),
            },
            accelerator_type=plan.accelerator_type,
        ),
        # Train logs every report at INFO
        run_config=RunConfig(
            name=run_name,
            storage_path=plan.train_storage,
            callbacks=list(callbacks),
            # every failure, a preemption too, ends fit(): the group's trial is retried by Tune from its checkpoint
            # (a preemption without counting it), and the pool starts a fresh group; retried inside fit(), the
            # resident worker would come back without the trial it was training
            failure_config=FailureConfig(max_failures=0, max_preemption_failures=0),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
