"""Optuna's samplers (TPE, MOTPE, NSGA-II, CMA-ES, GP) as Tune searchers: Ray Tune's OptunaSearch, seeded, with
the two things a run of ours needs besides.

- Constraints: Optuna's samplers read a trial's constraint values through `constraints_func(frozen_trial)`
  (a value <= 0 is satisfied). OptunaSearch tells Optuna only the objectives, so the trial's last report's
  constraint values are set as a user attribute just before it does, and `constraints_func` reads them back.
- Pinning, for `hpo resume` (tuning/pinning.py): where a proposal differs from the config the dead run gave
  the trial, the proposed Optuna trial is failed and one with the pinned config put in its place
  (ray_compat.repin_optuna_trial): Optuna cannot change a trial's params once asked.
- Conditional spaces (search/space.py) are asked define-by-run (OptunaSpace): the branch's name first, then
  only that branch's parameters, each by its key, so Optuna's samplers see which parameters a trial had.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.samplers import NSGAIISampler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.ray_support.ray_compat import add_optuna_history, optuna_trial, repin_optuna_trial
from orchestrator.search.objectives import Constraint
from orchestrator.search.space import Space
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


def suggest(trial, key: str, dist) -> Any:
    """Ask an Optuna trial (or Ray's captor of one) for the parameter `key` of Optuna distribution `dist`."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


class OptunaSpace:
    """A conditional space as Optuna's define-by-run function: each active leaf's parameter, top down, so a
    branch's parameters are asked only when its name was drawn. Picklable (Tune pickles the searcher)."""

    def __init__(self, space: Space, distributions: Mapping[str, Any]):
        self.space, self.distributions = space, dict(distributions)

    def __call__(self, trial) -> None:
        values: dict[str, Any] = {}
        for leaf in self.space.active(lambda leaf: values.get(leaf.key)):
            values[leaf.key] = suggest(trial, leaf.key, self.distributions[leaf.key])


class PinnableOptuna(Pinnable, OptunaSearch):
    """OptunaSearch with constraints, history, and proposals a resumed run can pin (tuning/pinning.py);
    `distributions`: every leaf's Optuna distribution by key (a trial of history has those of its own keys)."""

    def __init__(
        self,
        *args,
        distributions: Mapping[str, Any],
        constraints: Sequence[Constraint] = (),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.constraints = tuple(constraints)
        self.distributions = dict(distributions)

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
                    {key: self.distributions[key] for key in earlier.config},
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
