"""The Ray Tune trainable: one trial, in-process for 1 worker, a Ray Train TorchTrainer (DDP) for more.

Trial identity: Tune's own trial ids carry a random per-experiment prefix, so we name trials by creation order
("trial_0000", "trial_0001", ...) with `TrialNamer`, and derive each trial's seed from (job seed, index).
Creation order is fixed by the searcher, not by concurrency, so the same spec gives the same names and seeds.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray import tune

from orchestrator.attempts import current_attempt
from orchestrator.checkpoints import TrialCheckpoints
from orchestrator.determinism import derive_seed
from orchestrator.storage import is_remote, open_store
from orchestrator.storage.spool import SpoolingStore, run_spool_dir
from orchestrator.training import TrialPlan, run_training

TRIAL_PREFIX = "trial_"


class TrialNamer:
    """Tune's trial_name_creator. Tune deep-copies it per trial, so it cannot count; it reads the creation
    counter at the head of Tune's experiment_tag ("3_lr=0.01,..."), which BasicVariantGenerator starts at 0
    and SearchGenerator (every Searcher) at 1: `first` says which."""

    def __init__(self, first: int):
        self.first = first

    def __call__(self, trial) -> str:
        return f"{TRIAL_PREFIX}{int(str(trial.experiment_tag).split('_', 1)[0]) - self.first:04d}"


def trial_name(trial) -> str:
    """Our name of a Tune trial (set by TrialNamer); also its directory name."""
    return trial.custom_trial_name or str(trial)


def trial_index(name: str) -> int:
    return int(name.removeprefix(TRIAL_PREFIX))


def trial_seed(job_seed: int, index: int) -> int:
    return derive_seed(job_seed, index)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class _TuneReporter:
    def __init__(self, attempt: int):
        self.attempt = attempt

    def report(self, metrics: dict) -> None:
        tune.report({**metrics, "node_id": _node_id(), "attempt": self.attempt})


class _TrainReporter(_TuneReporter):
    def report(self, metrics: dict) -> None:
        import ray.train

        ray.train.report({**metrics, "node_id": _node_id(), "attempt": self.attempt})


def trial_checkpoints(plan: TrialPlan, name: str) -> TrialCheckpoints:
    """This trial's checkpoints, written through a spooling store (outages wait on local disk)."""
    store = SpoolingStore(
        open_store(plan.results_uri, plan.storage_options),
        run_spool_dir(plan.results_uri) / name,
        write_behind=is_remote(plan.results_uri),
    )
    return TrialCheckpoints(store, name, keep=plan.checkpoints_to_keep, mode=plan.mode)


# Test-only: set on the fake GPU nodes of cluster/local-fake.yaml, whose "GPUs" are Ray resources without a
# device. Trials that asked for a GPU then train on the CPU. Never set it on a real cluster.
FAKE_GPU_ENV = "HPO_FAKE_GPU"


def _fake_gpu() -> bool:
    return os.environ.get(FAKE_GPU_ENV) == "1"


def _device(plan: TrialPlan, local_rank: int) -> str:
    if not plan.use_gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available() and _fake_gpu():
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(
            "train.use_gpu is true but CUDA is not available on this node "
            "(torch.cuda.is_available() is False); set use_gpu: false or run on GPU nodes"
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def _ddp_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker; Ray Train has already set up the process group (gloo or NCCL)."""
    import ray.train
    from ray.train.v2._internal.execution import context as train_context

    # Ray 2.60 names this logger by file path, so LoggingConfig(log_level) misses its per-report INFO lines.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    plan: TrialPlan = loop_config["plan"]
    checkpoints = trial_checkpoints(plan, loop_config["name"])
    attempt = loop_config["attempt"]
    run_training(
        loop_config["hp"],
        loop_config["seed"],
        plan,
        _TrainReporter(attempt),
        checkpoints,
        restore=attempt > 0 or plan.resume,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=_device(plan, ctx.get_local_rank()),
    )


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable. `config` holds the searched hyperparameters."""
    name = tune.get_context().get_trial_name()
    seed = trial_seed(plan.job_seed, trial_index(name))
    hp = {**plan.fixed, **config}
    attempt = current_attempt(
        plan.results_uri, name
    )  # > 0: a retry, which continues from the last checkpoint
    if plan.workers == 1:
        run_training(
            hp,
            seed,
            plan,
            _TuneReporter(attempt),
            trial_checkpoints(plan, name),
            restore=attempt > 0 or plan.resume,
            device=_device(plan, 0),
        )
        return
    _run_ddp(name, hp, seed, plan, attempt)


def _run_ddp(name: str, hp: dict, seed: int, plan: TrialPlan, attempt: int) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    # a fresh Train run name per attempt: our checkpoints restore the trial, Train must not resume its own
    ddp_trainer(
        _ddp_worker,
        {"hp": hp, "seed": seed, "plan": plan, "name": name, "attempt": attempt},
        plan,
        run_name=f"{name}-attempt{attempt}",
        callbacks=[TuneReportCallback()],
    ).fit()


def ddp_trainer(worker, loop_config: dict, plan: TrialPlan, *, run_name: str, callbacks=()):
    """The TorchTrainer of a multi-worker trial (gloo on CPU, NCCL on GPU), for `worker(loop_config)`."""
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu and not _fake_gpu() else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=plan.workers, use_gpu=plan.use_gpu, resources_per_worker={"CPU": plan.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=plan.train_storage,
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )  # Train logs every report at INFO
