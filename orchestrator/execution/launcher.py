"""How a trial is launched: in the Tune trial's own process for one worker, as a Ray Train TorchTrainer (DDP)
for more. `launcher_for(train)` decides once; everything that differs between the two lives in its class:
the resources a trial asks Tune for, whether Tune may reuse actors, the Tune trainable, what must hold before a
job starts, the cleanup after it, and how `hpo reproduce` reruns a trial.

Trial identity: Tune's own trial ids carry a random per-experiment prefix, so trials are named by creation
order (execution/tune_search.py's TrialNamer) and each trial's seed derives from (job seed, index).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray import tune

from orchestrator.errors import RunError
from orchestrator.execution.attempts import current_attempt
from orchestrator.execution.ray_compat import train_knows_its_cluster
from orchestrator.execution.ray_env import has_dashboard, release_train_leftovers
from orchestrator.execution.torch_trainer import ddp_trainer
from orchestrator.execution.worker_pool import relay, start_pool
from orchestrator.results.layout import TRAIN_DIR, trial_index
from orchestrator.storage import LocalStore
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import TrialStopped
from orchestrator.train.determinism import trial_seed
from orchestrator.train.loop import run_training
from orchestrator.train.plan import TrialPlan
from orchestrator.train.trial import device_for, train_trial

DRIVER_CPU = 0.01  # logical CPUs of the Tune trial that drives a multi-worker TorchTrainer


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


class _TuneReporter:
    """In the Tune trial's process: tune.report."""

    def __init__(self, attempt: int):
        self.attempt = attempt

    def report(self, metrics: dict) -> None:
        tune.report({**metrics, "node_id": _node_id(), "attempt": self.attempt})


class Collect:
    """A reporter that keeps what it is given (hpo reproduce). With `stop_after`, it stops the trial at that
    report, as the scheduler stopped the trial being reproduced (its schedule still sees train.max_epochs)."""

    def __init__(self, stop_after: int | None = None):
        self.metrics: list[dict] = []
        self.stop_after = stop_after

    def report(self, metrics: dict) -> None:
        self.metrics.append(metrics)
        if self.stop_after is not None and len(self.metrics) >= self.stop_after:
            raise TrialStopped(f"reproduced the {self.stop_after} recorded iteration(s)")


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
    """Tune function trainable of a multi-worker trial: the job's pool of warm worker groups trains it
    (worker_pool.py); this process relays its reports to Tune and Tune's answers back."""
    name, hp, seed, attempt = _trial_start(config, plan)
    relay(plan.pool, name, hp, seed, attempt, tune.report)


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

    def before_job(self, plan: TrialPlan, *, max_concurrent: int, run_id: str) -> TrialPlan:
        """Once Ray is up, before the search: start what the trials share; returns the plan they get."""
        return plan

    def trial_ended(self, name: str, *, failed: bool) -> None:
        """The driver saw trial `name` end (completed, stopped by the scheduler, failed, to be retried)."""

    def after_job(self, progress: Callable[[str], None], *, joined: bool) -> dict:
        """Cleanup once the job's trials have ended; returns what run.json should say of it."""
        return {}

    def reproduce(
        self, session, hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str, iterations: int
    ) -> list[dict]:
        """Rerun one trial from scratch for its first `iterations` reports (checkpoints into `scratch`, Ray
        through `session` if it needs one); returns each report's metrics."""
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
        self, session, hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str, iterations: int
    ) -> list[dict]:
        reporter = Collect(stop_after=iterations)  # in this process: no Ray needed
        with contextlib.suppress(TrialStopped):
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
    """Several workers: a pool of warm Ray Train worker groups, one per concurrency slot, trains the trials one
    after another (worker_pool.py); a Tune trial only relays, taking a sliver of a CPU (Tune refuses an empty
    request), and its actor is reused like an in-process trial's."""

    trainable = staticmethod(run_ddp)
    reuse_actors = True

    def __init__(self, train):
        super().__init__(train)
        self._pool = None

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

    def before_job(self, plan: TrialPlan, *, max_concurrent: int, run_id: str) -> TrialPlan:
        name, self._pool = start_pool(plan, max_concurrent, run_id)
        return dataclasses.replace(plan, pool=name)

    def trial_ended(self, name: str, *, failed: bool) -> None:
        if self._pool is not None:  # a trial's own relay says so too; this covers a relay that died first
            self._pool.end.remote(name, failed)

    def after_job(self, progress: Callable[[str], None], *, joined: bool) -> dict:
        info = {}
        if self._pool is not None:
            try:
                counts = ray.get(self._pool.close.remote(), timeout=60)
                info["worker_groups"] = {k: v for k, v in counts.items() if k != "why"}
                progress(
                    f"worker groups: {counts['groups_started']} started for {counts['trials']} DDP trial "
                    f"attempt(s) ({counts['reused']} on a warm group, {counts['groups_failed']} lost to failures)"
                )
                for why in counts["why"]:
                    progress(f"worker group lost: {why}")
            except Exception as error:  # the results matter more than the cleanup
                progress(f"warning: the DDP worker groups did not end cleanly ({type(error).__name__})")
            with contextlib.suppress(Exception):
                ray.kill(self._pool, no_restart=True)
            self._pool = None
        if not joined:
            return info  # an embedded Ray ends with the driver, and its placement groups with it
        try:
            if removed := release_train_leftovers():
                progress(f"removed {removed} placement group(s) that stopped DDP trials left on the cluster")
        except Exception as error:  # the results matter more than the cleanup; say what may be left
            progress(f"warning: could not check for placement groups left by stopped DDP trials ({error})")
        return info

    def reproduce(
        self, session, hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str, iterations: int
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
            "iterations": iterations,
        }
        with train_knows_its_cluster():
            ddp_trainer(_reproduce_worker, config, plan, run_name=f"reproduce-{trial_id}").fit()
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def _scratch_checkpoints(scratch: str, trial_id: str, plan: TrialPlan) -> TrialCheckpoints:
    """A reproduction's checkpoints: in a scratch folder, thrown away after."""
    return TrialCheckpoints(LocalStore(scratch), trial_id, keep=1, mode=plan.mode)


class _FileReporter(Collect):
    """Rank 0 of a DDP reproduction: each report also as a line of `path`, read back by the driver."""

    def __init__(self, path: str, stop_after: int):
        super().__init__(stop_after)
        self.path = path

    def report(self, metrics: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({k: v for k, v in metrics.items() if not k.endswith("checkpoint")}) + "\n")
        super().report(metrics)


def _reproduce_worker(config: dict) -> None:
    ctx, plan = ray.train.get_context(), config["plan"]
    rank = ctx.get_world_rank()
    # every rank stops at the same report
    stop = config["iterations"]
    reporter = _FileReporter(config["out"], stop) if rank == 0 else Collect(stop)
    with contextlib.suppress(TrialStopped):
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
