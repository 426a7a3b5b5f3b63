"""How a trial is launched: in the Tune trial's own process for one worker, as a Ray Train TorchTrainer (DDP)
for more. `launcher_for(train)` decides once; everything that differs between the two lives in its class:
the resources a trial asks Tune for, whether Tune may reuse actors, the Tune trainable, what must hold before a
job starts, the cleanup after it, and how `hpo reproduce` reruns a trial.

Trial identity: Tune's own trial ids carry a random per-experiment prefix, so trials are named by creation
order (execution/tune_search.py's TrialNamer) and each trial's seed derives from (job seed, index).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train import LoggingConfig, RunConfig, ScalingConfig

from orchestrator.errors import RunError
from orchestrator.execution.attempts import current_attempt
from orchestrator.execution.ray_compat import (
    TRAIN_ENV,
    contains_error,
    quiet_train_worker,
    train_knows_its_cluster,
)
from orchestrator.execution.ray_env import has_dashboard, release_train_leftovers
from orchestrator.results.layout import TRAIN_DIR, trial_index
from orchestrator.storage import LocalStore
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import FinalTrialError
from orchestrator.train.determinism import trial_seed
from orchestrator.train.loop import run_training
from orchestrator.train.plan import TrialPlan
from orchestrator.train.trial import device_for, fake_gpu, train_trial

DRIVER_CPU = 0.01  # logical CPUs of the Tune trial that drives a multi-worker TorchTrainer


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


class _TuneReporter:
    """In the Tune trial's process: tune.report."""

    def __init__(self, attempt: int):
        self.attempt = attempt

    def report(self, metrics: dict) -> None:
        tune.report({**metrics, "node_id": _node_id(), "attempt": self.attempt})


class _TrainReporter(_TuneReporter):
    """On a Ray Train worker: ray.train.report, relayed to the Tune trial by TuneReportCallback."""

    def report(self, metrics: dict) -> None:
        ray.train.report({**metrics, "node_id": _node_id(), "attempt": self.attempt})


class Collect:
    """A reporter that keeps what it is given (hpo reproduce)."""

    def __init__(self):
        self.metrics: list[dict] = []

    def report(self, metrics: dict) -> None:
        self.metrics.append(metrics)


def _trial_start(config: dict[str, Any], plan: TrialPlan) -> tuple[str, dict, int, int]:
    """In a Tune trial: (name, hyperparameters, seed, attempt). attempt > 0 is a retry, which continues from
    the trial's last checkpoint."""
    name = tune.get_context().get_trial_name()
    return (
        name,
        {**plan.fixed, **config},
        trial_seed(plan.job_seed, trial_index(name)),
        current_attempt(plan.results_uri, name),
    )


def run_in_process(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable of a 1-worker trial. `config` holds the searched hyperparameters."""
    name, hp, seed, attempt = _trial_start(config, plan)
    train_trial(plan, name, hp, seed, _TuneReporter(attempt), attempt=attempt)


def run_ddp(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable of a multi-worker trial: it drives a TorchTrainer, whose reports it relays."""
    from ray.tune.integration.ray_train import TuneReportCallback  # heavy: Ray Train's torch stack, DDP only

    name, hp, seed, attempt = _trial_start(config, plan)
    # a fresh Train run name per attempt: our checkpoints restore the trial, Train must not resume its own
    trainer = ddp_trainer(
        _ddp_worker,
        {"hp": hp, "seed": seed, "plan": plan, "name": name, "attempt": attempt},
        plan,
        run_name=f"{name}-attempt{attempt}",
        callbacks=[TuneReportCallback()],
    )
    try:
        with train_knows_its_cluster():
            trainer.fit()
    except Exception as error:  # a rank's final error is the trial's: Tune must see it to not retry
        if contains_error(error, FinalTrialError):
            raise FinalTrialError(_final_message(error)) from error
        raise


def _final_message(error: BaseException) -> str:
    """The first line of the FinalTrialError a rank raised, from Ray Train's error text."""
    for line in str(error).splitlines():
        if "FinalTrialError" in line:
            return line.split("FinalTrialError:", 1)[-1].strip()
    return str(error).splitlines()[0] if str(error) else "a worker failed"


def _ddp_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker; Ray Train has already set up the process group (gloo or NCCL)."""
    quiet_train_worker()
    ctx = ray.train.get_context()
    train_trial(
        loop_config["plan"],
        loop_config["name"],
        loop_config["hp"],
        loop_config["seed"],
        _TrainReporter(loop_config["attempt"]),
        attempt=loop_config["attempt"],
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
    )


def ddp_trainer(
    worker: Callable[[dict], None], loop_config: dict, plan: TrialPlan, *, run_name: str, callbacks=()
):
    """The TorchTrainer of a multi-worker trial (gloo on CPU, NCCL on GPU), for `worker(loop_config)`."""
    # heavy: Ray Train's torch stack costs 2.3 s to import; 1-worker trials never pay it
    from ray.train.torch import TorchConfig, TorchTrainer

    for name, value in TRAIN_ENV.items():  # a trial's own process, or reproduce's driver inside its session
        os.environ.setdefault(name, value)
    return TorchTrainer(
        worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu and not fake_gpu() else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=plan.workers, use_gpu=plan.use_gpu, resources_per_worker={"CPU": plan.cpus_per_worker}
        ),
        # Train logs every report at INFO
        run_config=RunConfig(
            name=run_name,
            storage_path=plan.train_storage,
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


class Launcher:
    """How the trials of one job run; see launcher_for."""

    trainable: Callable[[dict, TrialPlan], None]
    reuse_actors: bool

    def __init__(self, train):
        self.train = train

    def trial_resources(self) -> dict[str, float]:
        """What a trial asks Tune for."""
        raise NotImplementedError

    def trial_cpus(self) -> float:
        """Logical CPUs one trial occupies in all (to size an embedded Ray)."""
        raise NotImplementedError

    def trial_gpus(self) -> float:
        return self.train.workers if self.train.use_gpu else 0.0

    def check_cluster(self) -> None:
        """Refuse, before anything is written, what would hang on this Ray."""

    def after_job(self, progress: Callable[[str], None], *, joined: bool) -> None:
        """Cleanup once the job's trials have ended."""

    def reproduce(
        self, session, hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str
    ) -> list[dict]:
        """Rerun one trial from scratch (checkpoints into `scratch`, Ray through `session` if it needs one);
        returns every epoch's metrics."""
        raise NotImplementedError


class InProcessLauncher(Launcher):
    """One worker: the trial trains in the Tune trial's own process."""

    trainable = staticmethod(run_in_process)
    reuse_actors = True  # measured: halves the per-trial start cost of in-process trials

    def trial_resources(self) -> dict[str, float]:
        return {"CPU": self.train.cpus_per_worker, "GPU": 1.0 if self.train.use_gpu else 0.0}

    def trial_cpus(self) -> float:
        return self.train.cpus_per_worker

    def reproduce(
        self, session, hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str
    ) -> list[dict]:
        reporter = Collect()  # in this process: no Ray needed
        run_training(
            hp,
            seed,
            plan,
            reporter,
            _scratch_checkpoints(scratch, trial_id, plan),
            restore=False,
            device=device_for(plan, 0),
        )
        return reporter.metrics


class DdpLauncher(Launcher):
    """Several workers: the Tune trial drives a Ray Train TorchTrainer, whose workers reserve their own CPUs
    and GPUs; the trial itself takes only a sliver (Tune refuses an empty request)."""

    trainable = staticmethod(run_ddp)
    reuse_actors = False

    def trial_resources(self) -> dict[str, float]:
        return {"CPU": DRIVER_CPU}

    def trial_cpus(self) -> float:
        return self.train.workers * self.train.cpus_per_worker + DRIVER_CPU

    def check_cluster(self) -> None:
        # Measured on Ray 2.60: without the dashboard, Train's placement-group cleaner cannot reach the State API
        # and the next trial's worker group never starts (RUNNING forever).
        if not has_dashboard():
            raise RunError(
                f"train.workers is {self.train.workers} but this Ray runs without its dashboard, and Ray Train "
                "2.60 then hangs starting worker groups; start Ray with the dashboard (ray start "
                "--include-dashboard=true) or use train.workers: 1"
            )

    def after_job(self, progress: Callable[[str], None], *, joined: bool) -> None:
        if not joined:
            return  # an embedded Ray ends with the driver, and its placement groups with it
        try:
            if removed := release_train_leftovers():
                progress(f"removed {removed} placement group(s) that stopped DDP trials left on the cluster")
        except Exception as error:  # the results matter more than the cleanup; say what may be left
            progress(f"warning: could not check for placement groups left by stopped DDP trials ({error})")

    def reproduce(
        self, session, hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str
    ) -> list[dict]:
        session.start_ray(min_cpus=self.trial_cpus() + 1)  # this machine's Ray (embedded unless one runs)
        out = Path(scratch) / "metrics.jsonl"
        plan = dataclasses.replace(plan, train_storage=str(Path(scratch) / TRAIN_DIR))
        config = {
            "hp": hp,
            "seed": seed,
            "plan": plan,
            "out": str(out),
            "scratch": scratch,
            "trial_id": trial_id,
        }
        with train_knows_its_cluster():
            ddp_trainer(_reproduce_worker, config, plan, run_name=f"reproduce-{trial_id}").fit()
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def _scratch_checkpoints(scratch: str, trial_id: str, plan: TrialPlan) -> TrialCheckpoints:
    """A reproduction's checkpoints: in a scratch folder, thrown away after."""
    return TrialCheckpoints(LocalStore(scratch), trial_id, keep=1, mode=plan.mode)


class _FileReporter:
    def __init__(self, path: str):
        self.path = path

    def report(self, metrics: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({k: v for k, v in metrics.items() if not k.endswith("checkpoint")}) + "\n")


def _reproduce_worker(config: dict) -> None:
    ctx, plan = ray.train.get_context(), config["plan"]
    rank = ctx.get_world_rank()
    reporter = _FileReporter(config["out"]) if rank == 0 else Collect()
    run_training(
        config["hp"],
        config["seed"],
        plan,
        reporter,
        _scratch_checkpoints(config["scratch"], config["trial_id"], plan),
        restore=False,
        rank=rank,
        world=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        device=device_for(plan, ctx.get_local_rank()),
    )


def launcher_for(train) -> Launcher:
    """The one place that decides: one worker runs in-process, more run DDP."""
    return InProcessLauncher(train) if train.workers == 1 else DdpLauncher(train)
