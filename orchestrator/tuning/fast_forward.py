"""The Tune search algorithms every run uses: each trial's config as its distributions state it, and, for
`hpo resume`, the trials a killed run finished passed over instead of rerun.

A resumed run creates its trials in the same order as before, so trial_0007 gets the same name, config and seed.
A trial the dead run finished never reaches Ray, though: the scheduler and the searcher are told what it
reported, in the order Tune itself would tell them (each result, then its completion), and the next trial is
created at once. Adaptive searchers (TPE) and schedulers (ASHA) therefore see the history they saw before,
for the price of a few function calls instead of a Tune trial each (measured: ~0.1 s per finished trial, which
made a kill of a long job cost ~14 s more than Ray's start-up).

Every search algorithm tuning/tune_search.py builds is one of the two classes below; `fast_forward` arms it for a
resume. Unarmed, they behave exactly as Tune's own, except that a trial's config is its searcher's proposal
read through the space (search/space.py's `config_of`): each value as its distribution states it (a quantized
float 0.30000000000000004 is 0.3), and of a conditional space only the hyperparameters of the branches taken,
by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import BasicVariantGenerator, SearchGenerator

from orchestrator.ray_support.ray_compat import tell_scheduler, trial_name
from orchestrator.search.space import Space


@dataclass
class FinishedTrials:
    """What a killed run finished: trial name -> its results (Tune's shape, one per epoch), and the scheduler
    that must hear about them."""

    results: dict[str, list[dict]] = field(default_factory=dict)
    scheduler: Any = None


class _Trials:
    """Mixin for a Tune SearchAlgorithm: canonical configs; next_trial never returns a trial in `finished`."""

    finished: FinishedTrials | None = None
    space: Space | None = None
    closed: Callable[[], bool] | None = (
        None  # the budget: once it says so, no new trial (and the search is over)
    )

    def next_trial(self):
        if self.closed is not None and self.closed():
            return None
        while (trial := super().next_trial()) is not None:
            config = self.space.config_of(trial.config)
            trial.config.clear()
            trial.config.update(config)
            results = self.finished.results.get(trial_name(trial)) if self.finished else None
            if not results:
                return trial
            self._pass_over(trial, results)
        return None

    def _pass_over(self, trial, results: list[dict]) -> None:
        # As TuneController does for a trial that reports `results` and then ends: a result the scheduler
        # stops on is its last; the searcher hears only the results the scheduler let through.
        for result in tell_scheduler(self.finished.scheduler, trial, results):
            self.on_trial_result(trial.trial_id, result)
        self.on_trial_complete(trial.trial_id, result=results[-1])  # frees its concurrency slot too

    def is_finished(self) -> bool:
        return super().is_finished() or (self.closed is not None and self.closed())

    def get_state(self):
        state = super().get_state()
        if isinstance(state, dict):  # BasicVariantGenerator saves its __dict__: keep the resume's data out
            state.pop("finished", None)
            state.pop("closed", None)
        return state


class VariantGenerator(_Trials, BasicVariantGenerator):
    """Tune's BasicVariantGenerator (random and grid search)."""

    def __init__(self, space: Space, **kwargs):
        super().__init__(**kwargs)
        self.space = space


class SearcherGenerator(_Trials, SearchGenerator):
    """Tune's SearchGenerator, which Tune would wrap a Searcher in anyway (quasi-random, TPE)."""

    def __init__(self, space: Space, searcher):
        super().__init__(searcher)
        self.space = space


def fast_forward(
    search_alg: _Trials, scheduler, results: dict[str, list[dict]], configs: dict[int, dict]
) -> FinishedTrials:
    """Arm `search_alg` to pass over the trials in `results` (telling `scheduler` and itself what they
    reported), and pin an adaptive searcher's proposals to `configs` (trial index -> the searched
    hyperparameters that trial had, keyed as its searcher proposed them); returns the record it passes over."""
    if not isinstance(search_alg, _Trials):
        raise TypeError(
            f"{type(search_alg).__name__} cannot pass over finished trials; build it in tune_search.py"
        )
    search_alg.finished = FinishedTrials(dict(results), scheduler)
    searcher = getattr(search_alg, "searcher", None)
    while searcher is not None:  # SearchGenerator -> ConcurrencyLimiter -> the searcher itself
        if hasattr(searcher, "pinned"):
            searcher.pinned = dict(configs)
        searcher = getattr(searcher, "searcher", None)
    return search_alg.finished
