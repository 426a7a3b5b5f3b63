"""What search/ describes, in the forms Ray Tune and HyperOpt take: one table per kind, keyed by search/'s class.

search/ says what to try and knows nothing of where it runs; this module is where its distributions become Tune
domains and HyperOpt expressions, and its schedulers Tune schedulers. Adding a distribution or a scheduler is its
class in search/ plus one entry in each table here (tests/test_registries.py checks every class has its entries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestrator.search.distributions import (
    Choice,
    Distribution,
    LogRandInt,
    LogUniform,
    QUniform,
    RandInt,
    Uniform,
)
from orchestrator.search.objectives import Objective
from orchestrator.search.schedulers import Asha, Fifo, Pbt, Scheduler
from orchestrator.search.space import Space
from orchestrator.tuning.pareto_asha import ParetoAsha
from orchestrator.tuning.pbt import SyncPbt

# Tune's randint and lograndint exclude their upper bound; search/'s include it.
TUNE_DOMAINS: dict[type[Distribution], Callable[[Any], Any]] = {
    Uniform: lambda d: tune.uniform(*d.uniform),
    LogUniform: lambda d: tune.loguniform(*d.loguniform),
    QUniform: lambda d: tune.quniform(*d.quniform),
    RandInt: lambda d: tune.randint(d.randint[0], d.randint[1] + 1),
    LogRandInt: lambda d: tune.lograndint(d.lograndint[0], d.lograndint[1] + 1),
    Choice: lambda d: tune.choice(list(d.choice)),
}


def _hp():
    """hyperopt's `hp`, imported when a HyperOpt search asks: hyperopt imports scipy.stats (0.85 s measured), which
    every other search, and every `hpo run` of one, would pay at its start."""
    from hyperopt import hp

    return hp


def _log_randint(d: LogRandInt, label: str) -> Any:
    from hyperopt.pyll import scope

    return scope.int(_hp().qloguniform(label, math.log(d.lograndint[0]), math.log(d.lograndint[1]), 1))


# HyperOpt takes a label per expression (the hyperparameter's name) and log-scale bounds as logarithms.
HYPEROPT_SPACES: dict[type[Distribution], Callable[[Any, str], Any]] = {
    Uniform: lambda d, label: _hp().uniform(label, *d.uniform),
    LogUniform: lambda d, label: _hp().loguniform(
        label, math.log(d.loguniform[0]), math.log(d.loguniform[1])
    ),
    QUniform: lambda d, label: _hp().quniform(label, *d.quniform),
    RandInt: lambda d, label: _hp().uniformint(label, *d.randint),
    LogRandInt: _log_randint,
    Choice: lambda d, label: _hp().choice(label, list(d.choice)),
}


@dataclass(frozen=True)
class ScheduledJob:
    """What a scheduler's Tune form needs of the job besides its own settings."""

    max_epochs: int  # train.max_epochs
    time_attr: str  # the result key that counts epochs
    objectives: tuple[Objective, ...]  # the search's, the primary first
    space: Space | None = None  # the searched space (PBT explores it)
    seed: int = 0  # the job seed (PBT's draws)
    population: int = 1  # the trials of the search (PBT's population)
    max_concurrent: int = 1  # trials running at once


def _asha(settings: Mapping[str, Any], job: ScheduledJob):
    if len(job.objectives) > 1:  # Tune's ASHA ranks one number per trial; several objectives rank by fronts
        return ParetoAsha(
            objectives=job.objectives,
            time_attr=job.time_attr,
            max_t=job.max_epochs,
            grace_period=settings["grace_period"],
            reduction_factor=settings["reduction_factor"],
        )
    return ASHAScheduler(
        time_attr=job.time_attr,
        max_t=job.max_epochs,
        grace_period=settings["grace_period"],
        reduction_factor=settings["reduction_factor"],
    )


def _pbt(settings: Mapping[str, Any], job: ScheduledJob):
    return SyncPbt(
        objective=job.objectives[0],
        space=job.space,
        seed=job.seed,
        population=job.population,
        max_concurrent=job.max_concurrent,
        max_epochs=job.max_epochs,
        time_attr=job.time_attr,
        settings=settings,
    )


# Optuna's distributions, built lazily: `import optuna` costs ~0.5 s, and only its samplers need it.
OPTUNA_DISTRIBUTIONS: dict[type[Distribution], Callable[[Any], Any]] = {
    Uniform: lambda d: _optuna().FloatDistribution(*d.uniform),
    LogUniform: lambda d: _optuna().FloatDistribution(*d.loguniform, log=True),
    QUniform: lambda d: _optuna().FloatDistribution(d.quniform[0], d.quniform[1], step=d.quniform[2]),
    RandInt: lambda d: _optuna().IntDistribution(*d.randint),
    LogRandInt: lambda d: _optuna().IntDistribution(*d.lograndint, log=True),
    Choice: lambda d: _optuna().CategoricalDistribution(list(d.choice)),
}


def _optuna():
    import optuna.distributions

    return optuna.distributions


def optuna_distribution(dist: Distribution) -> Any:
    """The Optuna distribution of a search distribution."""
    return OPTUNA_DISTRIBUTIONS[type(dist)](dist)


# settings: the scheduler's options (Scheduler.settings); job: what else of the job it needs
TUNE_SCHEDULERS: dict[type[Scheduler], Callable[[Mapping[str, Any], ScheduledJob], Any]] = {
    Fifo: lambda settings, job: FIFOScheduler(),
    Asha: _asha,
    Pbt: _pbt,
}


def tune_domain(dist: Distribution) -> Any:
    """The Ray Tune domain of a search distribution."""
    return TUNE_DOMAINS[type(dist)](dist)


def hyperopt_space(dist: Distribution, label: str) -> Any:
    """The HyperOpt expression of a search distribution, labelled with its hyperparameter's name."""
    return HYPEROPT_SPACES[type(dist)](dist, label)


def tune_scheduler(kind: Scheduler, settings: Mapping[str, Any], job: ScheduledJob) -> Any:
    """The Ray Tune scheduler of a search scheduler with these settings, for this job."""
    return TUNE_SCHEDULERS[type(kind)](settings, job)
