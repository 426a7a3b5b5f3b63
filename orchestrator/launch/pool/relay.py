"""The Tune side of a multi-worker trial (launcher.py's trainable calls `relay`): hand the trial to the pool, turn
each relayed report into tune.report, and raise a failed group's GroupFailure as Tune should see it."""

from __future__ import annotations

import ray

from orchestrator.launch.pool.coordinator import connect
from orchestrator.launch.protocol import GroupFailure
from orchestrator.ray_support.ray_compat import (
    preempted_error,
)
from orchestrator.results.layout import ITERATION_KEY
from orchestrator.train.exceptions import FinalTrialError


def relay(pool: str, name: str, hp: dict, seed: int, attempt: int, report) -> None:
    """In a multi-worker trial's Tune process: hand the trial to the pool, pass on its reports with `report`
    (tune.report), return when it is done, raise when it failed (FinalTrialError: not to be retried)."""
    coordinator = connect(pool)
    token = ray.get(coordinator.submit.remote(name, hp, seed, attempt))
    answered = None
    try:
        while True:
            kind, payload = ray.get(coordinator.next_event.remote(token, answered))
            if kind == "done":
                return
            if kind == "failed":
                failure: GroupFailure = payload
                if failure.lost:  # Tune retries it from its checkpoint, not counting it (train.max_retries)
                    raise preempted_error(failure.message)
                if failure.final:
                    raise FinalTrialError(failure.message)
                raise WorkerGroupFailed(failure.message)
            report(payload)  # returns when Tune wants the next report
            answered = payload[ITERATION_KEY]
    except (FinalTrialError, WorkerGroupFailed, ray.exceptions.RayActorError):
        raise
    except BaseException:  # Tune stopped the trial (SystemExit from tune.report) or the process is going
        coordinator.end.remote(token)
        raise


class WorkerGroupFailed(RuntimeError):
    """The worker group running this trial failed: a rank raised, or a process or node died. Tune retries the
    trial (train.max_retries) on a fresh group, from its last checkpoint."""
