"""Search spaces: the spec's distributions as Ray Tune domains, and our quasi-random (Sobol) searcher."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from orchestrator.spec import Search


def tune_domain(kind: str, args: list):
    """One spec distribution as a Ray Tune domain (randint is inclusive in specs, exclusive in Tune)."""
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)
    if kind == "choice":
        return tune.choice(list(args))
    raise ValueError(f"unknown distribution {kind!r}")


def tune_space(search: Search) -> dict[str, Any]:
    return {name: tune_domain(*search.distribution(name)) for name in search.space}


def grid_space(search: Search) -> dict[str, Any]:
    return {name: tune.grid_search(list(search.distribution(name)[1])) for name in search.space}


def from_unit(kind: str, args: list, u: float):
    """Map u in [0, 1) to a value of the distribution, so that uniform u gives the distribution."""
    if kind == "uniform":
        return args[0] + u * (args[1] - args[0])
    if kind == "loguniform":
        low, high = math.log(args[0]), math.log(args[1])
        return math.exp(low + u * (high - low))
    if kind == "randint":
        return min(args[1], args[0] + int(u * (args[1] - args[0] + 1)))
    if kind == "choice":
        return args[min(len(args) - 1, int(u * len(args)))]
    raise ValueError(f"unknown distribution {kind!r}")


class QuasiRandomSearcher(Searcher):
    """Scrambled Sobol points, one per trial in creation order (the Tuning Playbook's default for exploring).

    Points are drawn up front from the seed, so the i-th trial's config depends only on (space, seed, i),
    never on concurrency or completion order. Low-discrepancy points cover the space more evenly than random
    ones for the same budget, which makes the Playbook's isolation plots easier to read.
    """

    def __init__(self, search: Search, seed: int):
        super().__init__()
        from scipy.stats import qmc

        self._dims = [(name, *search.distribution(name)) for name in search.space]
        with warnings.catch_warnings():  # scipy warns when n is not a power of 2; balance is not our goal
            warnings.simplefilter("ignore")
            self._points = qmc.Sobol(d=len(self._dims), scramble=True, seed=seed).random(search.num_samples)
        self._next = 0

    def suggest(self, trial_id: str):
        if self._next >= len(self._points):
            return Searcher.FINISHED
        point = self._points[self._next]
        self._next += 1
        return {
            name: from_unit(kind, args, float(u))
            for (name, kind, args), u in zip(self._dims, point, strict=True)
        }

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        pass  # not adaptive

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            json.dump({"next": self._next}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as fh:
            self._next = json.load(fh)["next"]
