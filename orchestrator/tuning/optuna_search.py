"""Optuna's samplers (TPE, MOTPE, NSGA-II, CMA-ES, GP) as Tune searchers: Ray Tune's OptunaSearch, seeded, with
the two things a run of ours needs besides.

- Constraints: Optuna's samplers read a trial's constraint values through `constraints_func(frozen_trial)`
  (a value <= 0 is satisfied). OptunaSearch tells Optuna only the objectives, so the trial's last report's
  constraint values are set as a user attribute just before it does, and `constraints_func` reads them back.
- Pinning, for `hpo resume` (tuning/pinning.py): where a proposal differs from the config the dead run gave
  the trial, the proposed Optuna trial is failed and one with the pinned config put in its place
  (ray_compat.repin_optuna_trial): Optuna cannot change a trial's params once asked.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from optuna.samplers import NSGAIISampler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.ray_support.ray_compat import add_optuna_history, optuna_trial, repin_optuna_trial
from orchestrator.search.objectives import Constraint
from orchestrator.tuning.pinning import Pinnable

CONSTRAINTS_ATTR = "hpo_constraints"


def constraint_values(result: dict, constraints: Sequence[Constraint]) -> list[float]:
    """Optuna's form of a report's constraints: one value each, <= 0 when satisfied (a missing or non-finite
    metric is infinitely far from it)."""
    values = []
    for bound in constraints:
        value = result.get(bound.metric)
        if value is None or not math.isfinite(value):
            values.append(math.inf)
        else:
            values.append(value - bound.bound if bound.op == "<=" else bound.bound - value)
    return values


class Picklable:
    """Mixin for an Optuna sampler that holds a thread lock (NSGA-II's): Tune pickles the search algorithm into
    its experiment state as the Tuner is made, and a lock cannot be pickled. The lock is left out and remade."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, type(threading.Lock()))}

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in ("_thread_lock",):  # the one Optuna 4-5's NSGAIISampler keeps
            if not hasattr(self, name):
                setattr(self, name, threading.Lock())


class PicklableNSGAIISampler(Picklable, NSGAIISampler):
    """Optuna's NSGAIISampler, picklable (Picklable)."""


def read_constraints(frozen_trial, count: int) -> list[float]:
    """constraints_func for an Optuna sampler (bound to `count`, the number of constraints, with
    functools.partial, which pickles): what PinnableOptuna stored for the trial; a trial told without them (a
    failed one) breaks every constraint."""
    return list(frozen_trial.user_attrs.get(CONSTRAINTS_ATTR, [math.inf] * count))


class PinnableOptuna(Pinnable, OptunaSearch):
    """OptunaSearch with constraints, history, and proposals a resumed run can pin (tuning/pinning.py)."""

    def __init__(self, *args, constraints: Sequence[Constraint] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.constraints = tuple(constraints)

    def repin(self, trial_id: str, config: dict) -> None:
        repin_optuna_trial(self, trial_id, config)

    def add_history(self, history) -> None:
        """Tell the sampler of trials that ran elsewhere (search.warm_start): each as a completed Optuna trial
        with its config, its objectives' values and its constraint values, as if it had run here first."""
        objectives = self.metric if isinstance(self.metric, list) else [self.metric]
        add_optuna_history(
            self,
            [
                (
                    earlier.config,
                    [earlier.metrics[m] for m in objectives],
                    {CONSTRAINTS_ATTR: constraint_values(earlier.metrics, self.constraints)}
                    if self.constraints
                    else {},
                )
                for earlier in history
            ],
        )

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self.constraints and result and (trial := optuna_trial(self, trial_id)) is not None:
            trial.set_user_attr(CONSTRAINTS_ATTR, constraint_values(result, self.constraints))
        super().on_trial_complete(trial_id, result=result, error=error)
