"""What to try: the search algorithms a spec can name, each listed once.

Each entry says what it does (for the schema, "did you mean" and the README's table), what it needs of a
search space, and how many trials it makes. How Ray Tune runs it is tuning/tune_search.py's business: search/
never imports Ray at module level, so `hpo validate` stays fast and a plan can be tested without Ray.
"""

from __future__ import annotations

import warnings
from typing import Any

from orchestrator.search.distributions import GRID_LIMIT, finite_kinds
from orchestrator.search.space import Space


class Algorithm:
    """A search algorithm: how trial i's config is chosen."""

    name: str = ""
    help: str = ""
    adaptive: bool = False  # proposes from results so far: whole-job deterministic only at max_concurrent 1
    multi_objective: bool = True  # can search several objectives at once (a non-adaptive one ignores them)
    learns_from_history: bool = False  # takes earlier runs' finished trials as history (search.warm_start)
    enumerates: bool = False  # runs a fixed set of configs (grid): no start configs, no added trials

    def check(self, space: Space) -> None:
        """Raise ValueError if this algorithm cannot search `space`."""

    def num_trials(self, space: Space, num_samples: int) -> int:
        return num_samples


class Random(Algorithm):
    name = "random"
    help = "Ray Tune's BasicVariantGenerator, seeded by the job seed"


class Grid(Algorithm):
    name = "grid"
    help = "every combination of the values, num_samples times (distributions with finitely many values)"
    enumerates = True

    def check(self, space: Space) -> None:
        leaf = space.finite()
        if leaf is not None:
            where = "" if not leaf.when else f" ({leaf.where()})"
            raise ValueError(
                f"grid search needs every hyperparameter to be a choice or to take at most {GRID_LIMIT} values "
                f"({', '.join(finite_kinds())}); space.{leaf.name}{where} is {leaf.dist.describe()} (use "
                "algorithm: random or quasirandom)"
            )

    def num_trials(self, space: Space, num_samples: int) -> int:
        return space.count() * num_samples

    def values(self, space: Space) -> dict[str, list]:
        """Each hyperparameter's values, for Tune's grid_search (a flat space; a conditional one: `points`)."""
        return {leaf.key: leaf.dist.finite_values() for leaf in space.leaves}

    def points(self, space: Space, num_samples: int) -> list[dict[str, Any]]:
        """Every config of a conditional space, keyed, num_samples times over (a choice of branches counts each
        branch's own combinations, not every leaf's)."""
        return space.grid() * num_samples


class QuasiRandom(Algorithm):
    name = "quasirandom"
    help = "scrambled Sobol points seeded by the job seed (the Tuning Playbook's default for exploring)"

    def points(self, space: Space, seed: int, n: int) -> list[dict[str, Any]]:
        """The first n configs, keyed (search/space.py), drawn up front from the seed: trial i's config depends
        only on (space, seed, i), never on concurrency or completion order. Low-discrepancy points cover the
        space more evenly than random ones for the same budget, which makes the Playbook's isolation plots
        easier to read. A conditional space takes one dimension per leaf; a config keeps the active ones."""
        from scipy.stats import qmc  # heavy: SciPy's stats takes ~1 s to import

        with warnings.catch_warnings():  # scipy warns when n is not a power of 2; balance is not our goal
            warnings.simplefilter("ignore")
            points = qmc.Sobol(d=len(space.leaves), scramble=True, seed=seed).random(n)
        return [
            {leaf.key: leaf.dist.from_unit(float(u)) for leaf, u in zip(space.leaves, point, strict=True)}
            for point in points
        ]


class HyperOpt(Algorithm):
    name = "hyperopt"
    help = "HyperOpt's TPE (Tree-structured Parzen Estimator), seeded; adaptive; one metric"
    adaptive = True
    multi_objective = False


class OptunaSampler(Algorithm):
    """One of Optuna's samplers, through Ray Tune's OptunaSearch (tuning/optuna_search.py), seeded by the job seed.
    Adaptive: whole-job deterministic at max_concurrent 1."""

    adaptive = True
    learns_from_history = True
    takes_constraints = False  # Optuna's constraints_func: the sampler steers away from infeasible regions


class Tpe(OptunaSampler):
    name = "tpe"
    help = "Optuna's TPE sampler (multivariate), seeded; adaptive; one or several metrics; uses constraints"
    takes_constraints = True


class Motpe(OptunaSampler):
    name = "motpe"
    help = "Optuna's multi-objective TPE (MOTPE), seeded; adaptive; uses constraints"
    takes_constraints = True


class Nsga2(OptunaSampler):
    name = "nsga2"
    help = (
        "Optuna's NSGA-II genetic algorithm (population of max(4, min(50, num_samples / 4))), seeded; adaptive; "
        "several metrics; uses constraints"
    )
    takes_constraints = True

    def population(self, num_samples: int) -> int:
        """A population that leaves room for a few generations in a small search (Optuna's default is 50)."""
        return max(4, min(50, num_samples // 4))


class CmaEs(OptunaSampler):
    name = "cmaes"
    help = "Optuna's CMA-ES sampler, seeded; adaptive; one metric (a choice is sampled independently)"
    multi_objective = False


class Gp(OptunaSampler):
    name = "gp"
    help = (
        "Optuna's Gaussian-process Bayesian optimization (GPSampler), seeded; adaptive; one metric; uses "
        "constraints; computes with torch on the driver"
    )
    multi_objective = False
    takes_constraints = True


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a for a in (Random(), Grid(), QuasiRandom(), HyperOpt(), Tpe(), Motpe(), Nsga2(), CmaEs(), Gp())
}
