"""What runs in a trial's own processes, and only there: the training side of a Tune trial (1 worker), of a warm
worker group's workers (DDP) and of `hpo reproduce`. It imports train/ and so torch; the driver never imports
it (launch/launcher.py's trainables and the worker pool's hosts load it where they run), so `hpo run` starts
without torch and a DDP trial's Tune process, which only relays, never loads it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from typing import Any

import ray
import ray.train
from ray import tune

from orchestrator.budget.attempts import continuation
from orchestrator.launch.protocol import NAMESPACE, STOP, Segment, trial_start
from orchestrator.ray_support.ray_compat import node_draining, preempted_error, quiet_train_worker
from orchestrator.results.layout import ITERATION_KEY, adopted_checkpoint_file, checkpoint_file
from orchestrator.storage import LocalStore
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import TrialStopped
from orchestrator.train.loop import run_training
from orchestrator.train.plan import TrialPlan
from orchestrator.train.trial import device_for, train_trial


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


class _TuneReporter:
    """In the Tune trial's process: tune.report. A trial whose node is being drained (a spot reclaim the
    autoscaler was told of) leaves it at the report after the drain began, its checkpoint stored: it raises
    ray_compat.preempted_error, which Tune retries on another node without counting it as a failure. Ray keeps a
    draining node's running actors until they end, so a trial that did not leave would die with the node."""

    DRAIN_CHECK_S = 2.0  # asks the GCS at most this often (a report may come every few ms)

    def __init__(self, attempt: int):
        self.attempt = attempt
        self.node = _node_id()
        self.checked = time.monotonic()

    def report(self, metrics: dict) -> None:
        tune.report({**metrics, "node_id": self.node, "attempt": self.attempt})
        if time.monotonic() - self.checked >= self.DRAIN_CHECK_S:
            self.checked = time.monotonic()
            if node_draining(self.node):
                raise preempted_error(f"its node {self.node[:12]} is being drained (preempted)")


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


def train_in_process(config: dict[str, Any], plan: TrialPlan) -> None:
    """A 1-worker trial, in its Tune trial's process. `config` holds the searched hyperparameters."""
    name, hp, seed, attempt = trial_start(config, plan)
    continues = continuation(plan.results_uri, name)  # a PBT step's (tuning/pbt.py)
    train_trial(plan, name, hp, seed, _TuneReporter(attempt), attempt=attempt, continues=continues)


def reproduce_in_process(hp: dict, seed: int, plan: TrialPlan, trial_id: str, scratch: str, iterations: int):
    """hpo reproduce of a 1-worker trial, in this process; returns each report's metrics."""
    reporter = Collect(stop_after=iterations)
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


class _Window(Collect):
    """A lineage segment's reports: those of epochs `first`..`last` (a continued segment first re-reports the
    epochs its checkpoint holds), each also as a line of `path` if given (rank 0 of a DDP reproduction); it
    stops the training at `last`."""

    def __init__(self, first: int, last: int, path: str | None = None):
        super().__init__()
        self.first, self.last, self.path = first, last, path

    def report(self, metrics: dict) -> None:
        epoch = metrics[ITERATION_KEY]
        if self.first <= epoch <= self.last:
            self.metrics.append(metrics)
            if self.path is not None:
                with open(self.path, "a") as fh:
                    fh.write(
                        json.dumps({k: v for k, v in metrics.items() if not k.endswith("checkpoint")}) + "\n"
                    )
        if epoch >= self.last:
            raise TrialStopped(f"reproduced epochs {self.first}-{self.last}")


def reproduce_lineage(
    segments, plan: TrialPlan, scratch: str, *, rank: int = 0, world: int = 1, local_rank: int = 0, out=None
) -> list[dict]:
    """hpo reproduce of a PBT trial (on this rank): its lineage's segments in order, each from scratch or from the
    state the segment it continues ended with (the chief adopts it as the trial adopted its donor's checkpoint;
    every rank then restores it), and the reports of the trial's own segments (also written to `out`)."""
    store, kept = LocalStore(scratch), []
    for seg in segments:
        checkpoints = _scratch_checkpoints(scratch, seg.scratch_id, plan)
        if seg.start_from is not None:
            epoch = seg.first - 1
            if rank == 0:
                source = store.read_bytes(checkpoint_file(seg.start_from, epoch))
                store.write_bytes(adopted_checkpoint_file(seg.scratch_id, epoch), source)
                checkpoints.adopt(
                    epoch, donor=seg.start_from, config=seg.hp, seed=seg.seed, metric=plan.metric
                )
            if world > 1:
                import torch.distributed as dist  # a Train worker has it imported

                dist.barrier()
        else:
            checkpoints.start_fresh()
        reporter = _Window(seg.first, seg.last, out if seg.keep else None)
        with contextlib.suppress(TrialStopped):
            run_training(
                seg.hp,
                seg.seed,
                plan,
                reporter,
                checkpoints,
                restore=seg.start_from is not None,
                rank=rank,
                world=world,
                local_rank=local_rank,
                device=device_for(plan, local_rank),
            )
        if seg.keep:
            kept += reporter.metrics
    return kept


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


def reproduce_worker(config: dict) -> None:
    """Each Ray Train worker of a DDP reproduction: the trials one after another, on the same process group."""
    ctx, plan = ray.train.get_context(), config["plan"]
    rank = ctx.get_world_rank()
    for rerun in config["reruns"]:
        if rerun["segments"]:  # a PBT trial, through its lineage
            reproduce_lineage(
                [Segment(**segment) for segment in rerun["segments"]],
                plan,
                config["scratch"],
                rank=rank,
                world=ctx.get_world_size(),
                local_rank=ctx.get_local_rank(),
                out=rerun["out"] if rank == 0 else None,
            )
            _tidy(plan)
            continue
        # every rank stops at the same report
        stop = rerun["iterations"]
        reporter = _FileReporter(rerun["out"], stop) if rank == 0 else Collect(stop)
        with contextlib.suppress(TrialStopped):
            run_training(
                rerun["hp"],
                rerun["seed"],
                plan,
                reporter,
                _scratch_checkpoints(config["scratch"], rerun["trial_id"], plan),
                restore=False,
                rank=rank,
                world=ctx.get_world_size(),
                local_rank=ctx.get_local_rank(),
                device=device_for(plan, ctx.get_local_rank()),
            )
        _tidy(plan)


# -- the workers of a warm worker group (launch/pool/) ---------------------------------------------
class PoolReporter:
    """A resident worker's reporter: rank 0 relays each report and waits for Tune's answer; every rank learns
    it (a broadcast), and all stop at the same report when it is STOP."""

    def __init__(self, coordinator, token: str, attempt: int, rank: int, world: int, node_id: str):
        self.coordinator, self.token, self.attempt = coordinator, token, attempt
        self.rank, self.world, self.node_id = rank, world, node_id
        self.stopped = False

    def report(self, metrics: dict) -> None:
        answer = [None]
        if self.rank == 0:
            row = {**metrics, "node_id": self.node_id, "attempt": self.attempt}
            answer[0] = ray.get(self.coordinator.report.remote(self.token, row))
        if self.world > 1:
            import torch.distributed as dist  # heavy: only on a Train worker, which has it imported

            dist.broadcast_object_list(answer, src=0)
        if answer[0] == STOP:
            self.stopped = True
            raise TrialStopped(f"stopped by the scheduler at iteration {metrics.get(ITERATION_KEY)}")


def resident_worker(config: dict) -> None:
    """Each Ray Train worker of a slot: train the slot's trials one after another until told to leave."""
    quiet_train_worker()
    ctx = ray.train.get_context()
    rank, world, local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    coordinator = ray.get_actor(config["pool"], namespace=NAMESPACE)
    node_id = ray.get_runtime_context().get_node_id()
    plan: TrialPlan = config["plan"]
    while (work := ray.get(coordinator.next_work.remote(config["slot"], rank, node_id))) is not None:
        reporter = PoolReporter(coordinator, work["token"], work["attempt"], rank, world, node_id)
        try:
            train_trial(
                plan,
                work["name"],
                work["hp"],
                work["seed"],
                reporter,
                attempt=work["attempt"],
                continues=continuation(plan.results_uri, work["name"]),  # a PBT step's (tuning/pbt.py)
                rank=rank,
                world=world,
                local_rank=local_rank,
            )
        except TrialStopped:
            pass  # every rank stopped at the same report; the group is whole
        _tidy(plan)
        if rank == 0:
            ray.get(coordinator.finished.remote(config["slot"], work["token"], reporter.stopped))


def _tidy(plan: TrialPlan) -> None:
    """Between two trials in one process: drop the finished trial's objects (and its GPU memory)."""
    gc.collect()
    if plan.use_gpu:
        import torch  # heavy: imported already by the trial

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
