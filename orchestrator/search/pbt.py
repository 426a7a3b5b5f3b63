"""Population based training's decisions, as pure functions of the scores and a seeded generator: which trials
continue from which (exploit), and with what hyperparameters (explore). tuning/pbt.py applies them to Tune's
trials at each synchronous step; nothing here knows where trials run.

Ray Tune's PBT draws from Python's global `random`, so two runs of one spec differ. Here every draw comes from a
generator seeded by (job seed, step), and trials are ranked by (score, name): the same scores give the same
decisions, which is what lets a PBT search rerun bit-identically.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from orchestrator.search.distributions import Choice, Distribution
from orchestrator.search.space import Space

PERTURB_FACTORS = (0.8, 1.2)  # Ray Tune's defaults


def step_rng(seed: int, step: int) -> random.Random:
    """The generator of step `step`'s decisions (a string seed: the same on every platform and Python run)."""
    return random.Random(f"pbt-{seed}-{step}")


def quantile_size(population: int, quantile: float) -> int:
    """How many trials are in the top (and the bottom) quantile: as Ray Tune counts them (rounded up, at most
    half the population)."""
    k = math.ceil(population * quantile)
    return min(k, population // 2)


def exploits(scores: Mapping[str, float | None], quantile: float, rng: random.Random) -> dict[str, str]:
    """recipient -> donor: each trial of the bottom quantile continues from one of the top quantile, drawn by
    `rng`. `scores` are minimized (a missing or non-finite score ranks last); ties break by trial name."""

    def rank(name: str) -> tuple:
        score = scores[name]
        bad = score is None or not math.isfinite(score)
        return (bad, 0.0 if bad else score, name)

    ranked = sorted(scores, key=rank)
    k = quantile_size(len(ranked), quantile)
    if k == 0:
        return {}
    top, bottom = ranked[:k], sorted(ranked[-k:])
    return {name: rng.choice(top) for name in bottom}


def perturb(dist: Distribution, value: Any, rng: random.Random) -> Any:
    """A nearby value: a choice's neighbour (one step either way, kept in range), else the value times 0.8 or
    1.2, clipped to the range and stated as the distribution states it (an integer rounded)."""
    if isinstance(dist, Choice):
        values = dist.choice
        i = next(i for i, v in enumerate(values) if type(v) is type(value) and v == value)
        return values[min(len(values) - 1, max(0, i + rng.choice((-1, 1))))]
    low, high = dist.args[:2]
    moved = min(high, max(low, value * rng.choice(PERTURB_FACTORS)))
    return dist.canonical(moved)


def explore(config: Mapping[str, Any], space: Space, rng: random.Random, resample_probability: float) -> dict:
    """The hyperparameters a trial continues with after copying a donor whose config is `config`: each searched
    one drawn again with `resample_probability`, else perturbed. A choice of branches keeps the donor's branch
    (the checkpoint was trained in it: another optimizer could not load its state); its hyperparameters move."""
    new: dict[str, Any] = {}
    for leaf in space.active(lambda leaf: new.get(leaf.name)):
        value = config[leaf.name]
        if leaf.branches:
            new[leaf.name] = value
        elif rng.random() < resample_probability:
            new[leaf.name] = leaf.dist.canonical(leaf.dist.from_unit(rng.random()))
        else:
            new[leaf.name] = perturb(leaf.dist, value, rng)
    return {**config, **new}
