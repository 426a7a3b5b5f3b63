"""What to try: registries from a spec's names to Ray Tune search algorithms and schedulers.

Pure: `build_searcher(spec)` and `build_scheduler(spec)` construct objects without starting Ray.
Ray Tune's own implementations are used where they exist; quasi-random search is ours (space.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from orchestrator.fast_forward import SearcherGenerator, VariantGenerator
from orchestrator.space import QuasiRandomSearcher, grid_space, tune_space
from orchestrator.spec import JobSpec

# Results report the epoch under this key; ASHA counts it (robust to restored trials, unlike Tune's counter).
TIME_ATTR = "epoch"


class RegistryError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def _lookup(registry: dict, kind: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise RegistryError(f"unknown {kind} {name!r} (valid: {', '.join(registry)})") from None


def _random(spec: JobSpec):
    # Configs are drawn in trial-creation order from one seeded generator: concurrency does not change them.
    gen = VariantGenerator(max_concurrent=spec.search.max_concurrent, random_state=spec.seed)
    return gen, tune_space(spec.search), spec.search.num_samples


def _grid(spec: JobSpec):
    gen = VariantGenerator(max_concurrent=spec.search.max_concurrent, random_state=spec.seed)
    return gen, grid_space(spec.search), spec.search.num_samples


def _quasirandom(spec: JobSpec):
    searcher = QuasiRandomSearcher(spec.search, seed=spec.seed)
    return (
        SearcherGenerator(ConcurrencyLimiter(searcher, spec.search.max_concurrent)),
        {},
        spec.search.num_samples,
    )


def _hyperopt(spec: JobSpec):
    from orchestrator.search_tpe import PinnableHyperOpt

    # Space, metric and mode reach the searcher through the Tuner (Tune converts its domains for HyperOpt).
    searcher = PinnableHyperOpt(random_state_seed=spec.seed)
    limited = ConcurrencyLimiter(searcher, spec.search.max_concurrent)
    return SearcherGenerator(limited), tune_space(spec.search), spec.search.num_samples


# name -> builder(spec) -> (search algorithm, Tune param_space, num_samples). Each caps its own concurrency
# (Tune's max_concurrent_trials silently ignores BasicVariantGenerator instances) and is a fast_forward class,
# so `hpo resume` can pass over the trials a killed run finished.
SEARCHERS: dict[str, Callable[[JobSpec], tuple[Any, dict, int]]] = {
    "random": _random,
    "grid": _grid,
    "quasirandom": _quasirandom,
    "hyperopt": _hyperopt,
}


def _fifo(spec: JobSpec):
    return FIFOScheduler()


def _asha(spec: JobSpec):
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=spec.train.max_epochs,
        grace_period=spec.scheduler.grace_period or 1,
        reduction_factor=spec.scheduler.reduction_factor or 3,
    )


SCHEDULERS: dict[str, Callable[[JobSpec], Any]] = {"fifo": _fifo, "asha": _asha}


def build_searcher(spec: JobSpec):
    return _lookup(SEARCHERS, "search algorithm", spec.search.algorithm)(spec)


def build_scheduler(spec: JobSpec):
    return _lookup(SCHEDULERS, "scheduler", spec.scheduler.type)(spec)
