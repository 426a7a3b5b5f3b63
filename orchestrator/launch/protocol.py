"""What the driver's side of a launch (launcher.py, pool/) and the trial's side (trial_process.py) both
name: how a Tune trial learns who it is, the warm pool's namespace and verbs, and a reproduction's segments. Both sides import this module;
neither imports the other at its top (the trial's side imports torch, which the driver never does)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import tune

from orchestrator.budget.attempts import BUDGET_SPENT, budget_closed, current_attempt
from orchestrator.results.layout import trial_index
from orchestrator.train.exceptions import FinalTrialError
from orchestrator.train.plan import TrialPlan
from orchestrator.train.seeds import trial_seed

NAMESPACE = "hpo-pools"  # the Ray namespace of the warm pools' named actors
GO_ON, STOP = "continue", "stop"  # the coordinator's answer to a rank 0 report


@dataclasses.dataclass(frozen=True)
class GroupFailure:
    """How a warm worker group's trial failed, as its group host reports it and the relay raises it."""

    final: bool  # a FinalTrialError: not to be retried (the same code would fail again)
    message: str  # what the Tune trial raises: the error's text, then one line that says what happened
    lost: bool  # a node was lost (preempted, drained, dead): retried without counting against max_retries


@dataclasses.dataclass(frozen=True)
class Segment:
    """Epochs `first`..`last` of a PBT lineage, trained under one config: by trial `trial_id` (its seed and its
    config then), from scratch or from the state the segment `start_from` ended with (an exploit). `keep`:
    its reports are the reproduced trial's own, compared with its rows."""

    trial_id: str
    scratch_id: str  # where its checkpoints go in the reproduction's scratch store
    hp: dict
    seed: int
    first: int
    last: int
    start_from: str | None
    keep: bool


def trial_start(config: dict[str, Any], plan: TrialPlan) -> tuple[str, dict, int, int]:
    """In a Tune trial: (name, hyperparameters, seed, attempt). attempt > 0 is a retry, which continues from
    the trial's last checkpoint."""
    name = tune.get_context().get_trial_name()
    if budget_closed(plan.results_uri):
        raise FinalTrialError(BUDGET_SPENT)
    return (
        name,
        {**plan.fixed, **config},
        trial_seed(plan.job_seed, trial_index(name)),
        current_attempt(plan.results_uri, name),
    )
