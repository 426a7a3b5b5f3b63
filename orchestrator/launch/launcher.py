"""How a trial is launched: in the Tune trial's own process for one worker, as a Ray Train TorchTrainer (DDP)
for more. `launcher_for(train)` decides once; everything that differs between the two lives in its class:
the resources a trial asks Tune for, whether Tune may reuse actors, the Tune trainable, what must hold before a
job starts, the cleanup after it, and how `hpo reproduce` reruns a trial.

Trial identity: Tune's own trial ids carry a random per-experiment prefix, so trials are named by creation
order (tuning/tune_search.py's TrialNamer) and each trial's seed derives from (job seed, index).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator.errors import RunError
from orchestrator.launch.pool import relay, start_pool
from orchestrator.launch.protocol import Segment, trial_start
from orchestrator.launch.torch_trainer import ddp_trainer
from orchestrator.ray_support.ray_compat import (
    ACCELERATOR_SLIVER,
    accelerator_resource,
    on_the_head,
    train_knows_its_cluster,
)
from orchestrator.ray_support.ray_env import WarmTrials, has_dashboard, release_train_leftovers
from orchestrator.results.layout import TRAIN_DIR
from orchestrator.train.plan import TrialPlan


@dataclasses.dataclass(frozen=True)
class Rerun:
    """One trial for `hpo reproduce` to rerun from scratch: its recorded config and seed, and how many reports
    it made (the rerun stops there, as the scheduler stopped the trial). A PBT trial that exploited others is
    rerun through its lineage (`segments`, in order: its donors' epochs before each of its own)."""

    trial_id: str
    hp: dict
    seed: int
    iterations: int
    segments: tuple[Segment, ...] = ()


IN_PROCESS_TRIAL_MODULE = (
    "orchestrator.launch.preload"  # what a warm trial process imports ahead (preload.py)
)


def run_in_process(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable of a 1-worker trial. `config` holds the searched hyperparameters."""
    # late: the trial's process trains (torch, through train/); the driver, which only names this function
    # to Tune, never imports it. An embedded Ray may have imported it in this process already (warm_trials).
    from orchestrator.launch.trial_process import train_in_process

    train_in_process(config, plan)


def run_ddp(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable of a multi-worker trial: the job's pool of warm worker groups trains it
    (pool/); this process only relays its reports to Tune and Tune's answers back (no torch)."""
    name, hp, seed, attempt = trial_start(config, plan)
    relay(plan.pool, name, hp, seed, attempt, tune.report)


class Launcher:
    """How the trials of one job run; see launcher_for."""

    trainable: Callable[[dict, TrialPlan], None]
    reuse_actors: bool
    needs_dashboard: bool  # of an embedded Ray: Ray Train's placement-group cleaner needs it
    extra_cpus: int = (
        0  # an embedded Ray's logical CPUs beyond the cores, for slivers (ray_env.embedded_cpus)
    )
    driver_cpus: float = (
        0.0  # of a trial, held besides its workers' (its Tune process, if that does not train)
    )

    def __init__(self, train):
        self.train = train

    def trial_resources(self) -> dict[str, float]:
        """What a trial asks Tune for."""
        raise NotImplementedError

    def worker_bundle(self) -> dict[str, float]:
        """What each worker of a trial needs on one node: its CPUs, its GPU, the custom resources and the
        accelerator type (as Ray Train asks for it: a sliver of the node's accelerator_type resource)."""
        bundle = {"CPU": self.train.cpus_per_worker, **self.train.resources_per_worker}
        if self.train.use_gpu:
            bundle["GPU"] = self.train.gpus()
        if self.train.accelerator_type:
            bundle[accelerator_resource(self.train.accelerator_type)] = ACCELERATOR_SLIVER
        return bundle

    def trial_cpus(self) -> float:
        """Logical CPUs one trial occupies in all (to size an embedded Ray)."""
        raise NotImplementedError

    def trial_gpus(self) -> float:
        return self.train.workers * self.worker_bundle().get("GPU", 0.0)

    def warm_trials(self, at_once: int) -> WarmTrials | None:
        """The trial processes an embedded Ray may start ahead for a job running `at_once` trials at once, if
        every process that Ray starts is a trial's."""
        return None

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

    def reproduce(self, session, reruns: list[Rerun], plan: TrialPlan, scratch: str) -> dict[str, list[dict]]:
        """Rerun trials from scratch, one after another, each for its first `iterations` reports (checkpoints
        into `scratch`, Ray through `session` if it needs one); returns each report's metrics, by trial id."""
        raise NotImplementedError


class InProcessLauncher(Launcher):
    """One worker: the trial trains in the Tune trial's own process."""

    trainable = staticmethod(run_in_process)
    reuse_actors = True  # measured: halves the per-trial start cost of in-process trials
    needs_dashboard = False  # no Ray Train: an embedded Ray starts ~2 s sooner without it

    def trial_resources(self) -> dict[str, float]:
        return {"GPU": 0.0, **self.worker_bundle()}

    def trial_cpus(self) -> float:
        return self.train.cpus_per_worker

    def warm_trials(self, at_once: int) -> WarmTrials | None:
        # Not for GPU trials: how many fit depends on GPUs Ray has not counted yet, and an idle worker too many
        # holds host memory for nothing. Without Ray Train, the Tune trials are the only processes of the Ray.
        if self.train.use_gpu:
            return None
        return WarmTrials(IN_PROCESS_TRIAL_MODULE, trial_cpus=self.trial_cpus(), at_once=at_once)

    def reproduce(self, session, reruns: list[Rerun], plan: TrialPlan, scratch: str) -> dict[str, list[dict]]:
        # late: it trains here (torch)
        from orchestrator.launch.trial_process import reproduce_in_process, reproduce_lineage

        # in this process: no Ray
        return {
            r.trial_id: reproduce_lineage(r.segments, plan, scratch)
            if r.segments
            else reproduce_in_process(r.hp, r.seed, plan, r.trial_id, scratch, r.iterations)
            for r in reruns
        }


class DdpLauncher(Launcher):
    """Several workers: a pool of warm Ray Train worker groups, one per concurrency slot, trains the trials one
    after another (pool/); a Tune trial only relays, on the head, taking a sliver of the head's own
    resource and no CPU (Tune refuses an empty request), and its actor is reused like an in-process trial's."""

    trainable = staticmethod(run_ddp)
    reuse_actors = True
    needs_dashboard = True
    extra_cpus = 1  # headroom beside the workers for Ray Train's and Tune's own processes on an embedded Ray
    driver_cpus = 0.0  # the relaying Tune trial takes no CPU (a sliver of the head's own resource instead)

    def __init__(self, train):
        super().__init__(train)
        self._pool = None

    def trial_resources(self) -> dict[str, float]:
        # on the head, with no CPU: a relay only waits on the pool (ray_compat.head_resource says why the head)
        return {"CPU": 0.0, **on_the_head()}

    def trial_cpus(self) -> float:
        return self.train.workers * self.train.cpus_per_worker

    def check_cluster(self) -> None:
        # Measured on Ray 2.60: without the dashboard, Train's placement-group cleaner cannot reach the State API
        # and the next trial's worker group never starts (RUNNING forever).
        if not has_dashboard():
            raise RunError(
                f"train.workers is {self.train.workers} but this Ray runs without its dashboard, and Ray Train "
                "2.60 then hangs starting worker groups; start Ray with the dashboard (ray start "
                "--include-dashboard=true, orchestrator.session(ddp=True)) or use train.workers: 1"
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

    def reproduce(self, session, reruns: list[Rerun], plan: TrialPlan, scratch: str) -> dict[str, list[dict]]:
        """One fresh TorchTrainer for all of them: the first trial starts the group, the others follow it on
        the same workers, as the trials of a job follow each other on a warm group."""
        session.start_ray(extra_cpus=self.extra_cpus)  # this machine's Ray (embedded unless one runs)
        out = {r.trial_id: Path(scratch) / f"{r.trial_id}.jsonl" for r in reruns}
        plan = dataclasses.replace(plan, train_storage=str(Path(scratch) / TRAIN_DIR))
        config = {
            "reruns": [{**dataclasses.asdict(r), "out": str(out[r.trial_id])} for r in reruns],
            "plan": plan,
            "scratch": scratch,
        }
        from orchestrator.launch.trial_process import reproduce_worker  # late: the workers train (torch)

        with train_knows_its_cluster():
            ddp_trainer(reproduce_worker, config, plan, run_name=f"reproduce-{reruns[0].trial_id}").fit()
        return {
            trial_id: [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
            for trial_id, path in out.items()
        }


def launcher_for(train) -> Launcher:
    """The one place that decides: one worker runs in-process, more run DDP."""
    return InProcessLauncher(train) if train.workers == 1 else DdpLauncher(train)
