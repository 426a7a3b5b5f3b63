"""`hpo resume` without rerunning anything: search algorithms that pass over the trials a killed run finished.

A resumed run creates its trials in the same order as before, so trial_0007 gets the same name, config and seed.
A trial the dead run finished never reaches Ray, though: the scheduler and the searcher are told what it
reported, in the order Tune itself would tell them (each result, then its completion), and the next trial is
created at once. Adaptive searchers (TPE) and schedulers (ASHA) therefore see the history they saw before,
for the price of a few function calls instead of a Tune trial each (measured: ~0.1 s per finished trial, which
made a kill of a long job cost ~14 s more than Ray's start-up).

Every search algorithm `search.py` builds is one of the two classes below; `fast_forward` arms it for a
resume. Unarmed, they behave exactly as Tune's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchGenerator


@dataclass
class FinishedTrials:
    """What a killed run finished: trial name -> its results (Tune's shape, one per epoch), and the scheduler
    that must hear about them."""

    results: dict[str, list[dict]] = field(default_factory=dict)
    scheduler: Any = None
    passed: int = 0  # how many were passed over, for the progress line and the tests


class _FastForward:
    """Mixin for a Tune SearchAlgorithm: next_trial never returns a trial named in `self.finished`."""

    finished: FinishedTrials | None = None

    def next_trial(self):
        while (trial := super().next_trial()) is not None:
            from orchestrator.trial import trial_name

            results = self.finished.results.get(trial_name(trial)) if self.finished else None
            if not results:
                return trial
            self._pass_over(trial, results)
        return None

    def _pass_over(self, trial, results: list[dict]) -> None:
        # As TuneController does for a trial that reports `results` and then ends: a result the scheduler
        # stops on is its last; the searcher hears only the results the scheduler let through.
        scheduler = self.finished.scheduler
        scheduler.on_trial_add(None, trial)
        for result in results:
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                break
            self.on_trial_result(trial.trial_id, result)
        scheduler.on_trial_complete(None, trial, results[-1])
        self.on_trial_complete(trial.trial_id, result=results[-1])  # frees its concurrency slot too
        self.finished.passed += 1

    def get_state(self):
        state = super().get_state()
        if isinstance(state, dict):  # BasicVariantGenerator saves its __dict__: keep the resume's data out
            state.pop("finished", None)
        return state


class VariantGenerator(_FastForward, BasicVariantGenerator):
    """Tune's BasicVariantGenerator (random and grid search)."""


class SearcherGenerator(_FastForward, SearchGenerator):
    """Tune's SearchGenerator, which Tune would wrap a Searcher in anyway (quasi-random, TPE)."""


def fast_forward(
    search_alg: _FastForward, scheduler, results: dict[str, list[dict]], configs: dict[int, dict]
) -> FinishedTrials:
    """Arm `search_alg` to pass over the trials in `results` (telling `scheduler` and itself what they
    reported), and pin an adaptive searcher's proposals to `configs` (trial index -> the searched
    hyperparameters that trial had); returns the record of what it passed over."""
    if not isinstance(search_alg, _FastForward):
        raise TypeError(
            f"{type(search_alg).__name__} cannot pass over finished trials; build it in search.py"
        )
    search_alg.finished = FinishedTrials(dict(results), scheduler)
    searcher = getattr(search_alg, "searcher", None)
    while searcher is not None:  # SearchGenerator -> ConcurrencyLimiter -> the searcher itself
        if hasattr(searcher, "pinned"):
            searcher.pinned = dict(configs)
        searcher = getattr(searcher, "searcher", None)
    return search_alg.finished
