"""How Ray Tune runs what search/ describes: the search algorithm and scheduler of a spec as Tune objects.

BUILDERS maps each search algorithm of search/algorithms.py to its Tune form; every one is a fast_forward
class, so `hpo resume` can pass over finished trials, and each caps its own concurrency (Tune's
max_concurrent_trials silently ignores BasicVariantGenerator instances). Trials are named by creation order
(TrialNamer), which the searcher fixes, not concurrency, so the same spec gives the same names and seeds.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from orchestrator.ray_support.ray_compat import choose_only_when_a_trial_waits, creation_counter
from orchestrator.results.layout import ITERATION_KEY, trial_id
from orchestrator.search.algorithms import (
    Algorithm,
    CmaEs,
    Gp,
    Grid,
    HyperOpt,
    Motpe,
    Nsga2,
    OptunaSampler,
    QuasiRandom,
    Random,
    Tpe,
)
from orchestrator.spec import JobSpec
from orchestrator.tuning.fast_forward import SearcherGenerator, VariantGenerator
from orchestrator.tuning.forms import (
    ScheduledJob,
    hyperopt_space,
    optuna_distribution,
    tune_domain,
    tune_scheduler,
)


class TrialNamer:
    """Tune's trial_name_creator: "trial_0000", "trial_0001", ... by creation order. Tune deep-copies it per
    trial, so it cannot count; it reads Tune's creation counter, which starts at `first`."""

    def __init__(self, first: int):
        self.first = first

    def __call__(self, trial) -> str:
        return trial_id(creation_counter(trial) - self.first)


class PointsSearcher(Searcher):
    """Proposes a list of configs drawn up front, one per trial in creation order: search/algorithms.py's
    quasi-random points, or a conditional space's grid."""

    def __init__(self, points: list[dict[str, Any]]):
        super().__init__()
        self._points = points
        self._next = 0

    def suggest(self, trial_id: str):
        if self._next >= len(self._points):
            return Searcher.FINISHED
        self._next += 1
        return dict(self._points[self._next - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        pass  # not adaptive

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            json.dump({"next": self._next}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as fh:
            self._next = json.load(fh)["next"]


def _live(spec: JobSpec) -> int:
    """How many trials the searcher keeps live (created, not ended): max_concurrent; under PBT the whole
    population, which its scheduler runs max_concurrent at a time (a paused trial stays live)."""
    return spec.search.num_trials() if spec.scheduler.kind.adapts_configs else spec.search.max_concurrent


def _limited(spec: JobSpec, searcher: Searcher) -> SearcherGenerator:
    return SearcherGenerator(spec.search.hyperparameters, ConcurrencyLimiter(searcher, _live(spec)))


def _random(spec: JobSpec, algorithm: Random, history=()):
    # Configs are drawn in trial-creation order from one seeded generator: concurrency does not change them.
    # Every leaf of a conditional space is drawn; the trial's config keeps the active ones (search/space.py).
    space = spec.search.hyperparameters
    gen = VariantGenerator(
        space,
        max_concurrent=_live(spec),
        random_state=spec.seed,
        points_to_evaluate=spec.search.start_points(fill=True),  # the first trials, as given
    )
    return gen, {leaf.key: tune_domain(leaf.dist) for leaf in space.leaves}


def _grid(spec: JobSpec, algorithm: Grid, history=()):
    space = spec.search.hyperparameters
    if space.conditional:  # Tune's grid is a product over keys; a branch's leaves count only under it
        return _limited(spec, PointsSearcher(algorithm.points(space, spec.search.num_samples))), {}
    gen = VariantGenerator(space, max_concurrent=_live(spec), random_state=spec.seed)
    return gen, {key: tune.grid_search(values) for key, values in algorithm.values(space).items()}


def _quasirandom(spec: JobSpec, algorithm: QuasiRandom, history=()):
    # the start configs, then the Sobol sequence from its beginning
    start = spec.search.start_points()
    points = algorithm.points(spec.search.hyperparameters, spec.seed, spec.search.num_samples - len(start))
    return _limited(spec, PointsSearcher(start + points)), {}


def _hyperopt(spec: JobSpec, algorithm: HyperOpt, history=()):
    # heavy: hyperopt and scipy.stats (0.6 s measured); only TPE searches load them
    from orchestrator.tuning.tpe import PinnableHyperOpt

    # HyperOpt samples every leaf of a conditional space (one label each); the trial's config keeps the active
    # ones. Its TPE models each label on its own, as it does in a flat space.
    space = {leaf.key: hyperopt_space(leaf.dist, leaf.key) for leaf in spec.search.hyperparameters.leaves}
    searcher = PinnableHyperOpt(
        space=space,
        metric=spec.search.primary.metric,
        mode=spec.search.primary.mode,
        random_state_seed=spec.seed,
        points_to_evaluate=spec.search.start_points(fill=True) or None,
    )
    return _limited(spec, searcher), {}


def _optuna_sampler(spec: JobSpec, algorithm: OptunaSampler):
    import optuna  # heavy: only Optuna's samplers load it

    from orchestrator.tuning.optuna_search import PicklableNSGAIISampler, read_constraints

    seed = spec.seed % 2**32  # numpy's RandomState, under every Optuna sampler, takes a 32-bit seed
    constraints = spec.search.bounds if algorithm.takes_constraints else ()
    limits = (
        {"constraints_func": functools.partial(read_constraints, count=len(constraints))}
        if constraints
        else {}
    )
    if isinstance(algorithm, Nsga2):
        return PicklableNSGAIISampler(
            population_size=algorithm.population(spec.search.num_samples), seed=seed, **limits
        )
    if isinstance(algorithm, CmaEs):
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if isinstance(algorithm, Gp):
        return optuna.samplers.GPSampler(seed=seed, **limits)
    # tpe, motpe; a conditional space's parameters are grouped by the branches they appear in (Optuna's group)
    group = spec.search.hyperparameters.conditional
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=group, **limits)


def _optuna(spec: JobSpec, algorithm: OptunaSampler, history=()):
    import optuna

    from orchestrator.tuning.optuna_search import OptunaSpace, PinnableOptuna

    optuna.logging.set_verbosity(
        optuna.logging.WARNING
    )  # a line per trial otherwise, and experimental warnings
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # a conditional space is asked define-by-run, and Ray warns when asking takes over a second: a model-based
    # sampler's own work (GP's fit) happens there, not training
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument")
    objectives = spec.search.objectives
    several = len(objectives) > 1
    space = spec.search.hyperparameters
    distributions = {leaf.key: optuna_distribution(leaf.dist) for leaf in space.leaves}
    searcher = PinnableOptuna(
        # a conditional space is asked define-by-run: only the branches taken are suggested
        space=OptunaSpace(space, distributions) if space.conditional else distributions,
        distributions=distributions,
        metric=[o.metric for o in objectives] if several else objectives[0].metric,
        mode=[o.mode for o in objectives] if several else objectives[0].mode,
        points_to_evaluate=spec.search.start_points() or None,
        sampler=_optuna_sampler(spec, algorithm),
        constraints=spec.search.bounds if algorithm.takes_constraints else (),
    )
    if history:  # earlier runs' finished trials (search.warm_start): told to the sampler, never run
        searcher.add_history(history)
    return _limited(spec, searcher), {}


# search algorithm -> builder(spec, algorithm, history) -> (Tune search algorithm, Tune param_space); history:
# the earlier trials of search.warm_start (execution/warm.py), which only the learners of history take
BUILDERS: dict[type[Algorithm], Callable[..., tuple[Any, dict]]] = {
    Random: _random,
    Grid: _grid,
    QuasiRandom: _quasirandom,
    HyperOpt: _hyperopt,
    **{kind: _optuna for kind in (Tpe, Motpe, Nsga2, CmaEs, Gp)},
}


def build_search(spec: JobSpec, history=()) -> tuple[Any, dict, TrialNamer]:
    """(Tune search algorithm, param_space, trial namer) for the spec's search; `history`: earlier runs' finished
    trials (config and metrics each) for a searcher that learns from them."""
    algorithm = spec.search.search_algorithm
    search_alg, param_space = BUILDERS[type(algorithm)](spec, algorithm, history)
    return search_alg, param_space, TrialNamer(first=0 if isinstance(search_alg, VariantGenerator) else 1)


def tune_num_samples(spec: JobSpec, search_alg) -> int:
    """Tune's num_samples for `search_alg`: Tune's own generator counts passes over a grid (the spec's
    num_samples); a searcher, trials (a conditional grid's searcher proposes every pass's configs)."""
    return spec.search.num_samples if isinstance(search_alg, VariantGenerator) else spec.search.num_trials()


def build_scheduler(spec: JobSpec):
    job = ScheduledJob(
        max_epochs=spec.train.max_epochs,
        time_attr=ITERATION_KEY,
        objectives=spec.search.objectives,
        space=spec.search.hyperparameters,
        seed=spec.seed,
        population=spec.search.num_trials(),
        max_concurrent=spec.search.max_concurrent,
    )
    scheduler = tune_scheduler(spec.scheduler.kind, spec.scheduler.settings(), job)
    return choose_only_when_a_trial_waits(scheduler)  # Tune's choice scans every trial at every step
