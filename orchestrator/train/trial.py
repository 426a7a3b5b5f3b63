"""What runs inside a trial's process, whichever way it was launched (launch/launcher.py): the device, the
trial's checkpoints on the run's store, and the call into the training loop.
"""

from __future__ import annotations

import torch

from orchestrator.results.layout import ITERATION_KEY
from orchestrator.storage import open_store
from orchestrator.storage.spool import SpoolingStore, run_spool_dir
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import Reporter
from orchestrator.train.loop import run_training
from orchestrator.train.plan import TrialPlan, fake_gpu


def device_for(plan: TrialPlan, local_rank: int) -> str:
    """The torch device of this process: cpu, or the local rank's GPU (a clear error if there is none)."""
    if not plan.use_gpu:
        return "cpu"
    if not torch.cuda.is_available() and fake_gpu():
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(
            "train.use_gpu is true but CUDA is not available on this node "
            "(torch.cuda.is_available() is False); set use_gpu: false or run on GPU nodes"
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def trial_checkpoints(plan: TrialPlan, name: str) -> TrialCheckpoints:
    """This trial's checkpoints, written through a spooling store (outages wait on local disk)."""
    inner = open_store(plan.results_uri, plan.storage_options)
    store = SpoolingStore(inner, run_spool_dir(plan.results_uri) / name, write_behind=inner.remote)
    return TrialCheckpoints(store, name, keep=plan.checkpoints_to_keep, mode=plan.mode)


class StoredFirst:
    """A reporter that sends the report of every `every`-th epoch only once the store holds what the trial wrote
    (its checkpoint): PBT's driver copies that checkpoint as soon as the step comes, and a remote store's
    writes are uploaded behind training. A store that does not take them in time delays nothing further: the
    driver then finds no checkpoint and says so."""

    WAIT_S = 60.0

    def __init__(self, inner, store, every: int):
        self.inner, self.store, self.every = inner, store, every

    def report(self, row: dict) -> None:
        if row.get(ITERATION_KEY, 0) % self.every == 0 and hasattr(self.store, "drain"):
            self.store.drain(self.WAIT_S)
        self.inner.report(row)


def train_trial(
    plan: TrialPlan,
    name: str,
    hp: dict,
    seed: int,
    reporter: Reporter,
    *,
    attempt: int,
    continues: tuple[int, str | None] | None = None,
    rank: int = 0,
    world: int = 1,
    local_rank: int = 0,
) -> None:
    """One rank of one attempt of trial `name`. A retry (attempt > 0), a resumed run or a PBT step
    (`continues`: the epoch and the donor, if it exploits one) continues from the trial's latest checkpoint
    (after making the donor's its own); a first attempt starts fresh without reading the store."""
    checkpoints = trial_checkpoints(plan, name)
    if continues is not None and continues[1] is not None:
        if rank == 0:
            checkpoints.adopt(continues[0], donor=continues[1], config=hp, seed=seed, metric=plan.metric)
        if world > 1:  # every rank restores from what the chief adopted, not from what was there before
            import torch.distributed as dist

            dist.barrier()
    if plan.stored_every:
        reporter = StoredFirst(reporter, checkpoints.store, plan.stored_every)
    run_training(
        hp,
        seed,
        plan,
        reporter,
        checkpoints,
        restore=attempt > 0 or plan.resume or continues is not None,
        rank=rank,
        world=world,
        local_rank=local_rank,
        device=device_for(plan, local_rank),
    )
