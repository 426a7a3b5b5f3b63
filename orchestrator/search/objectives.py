"""What a search optimizes: its objectives (a metric and a direction each) and its constraints on outcomes.

A trial's point is the values of its objectives at its last report (for a trial ASHA stopped, where it stopped).
With several objectives no single trial is "the best": the answer is the Pareto front, the feasible trials no
other feasible trial dominates. A constraint (`latency_ms <= 5.0`) is checked on each report; a trial is
feasible when its last report satisfies every constraint, and a report that breaks one is never the best.
Everything here is plain Python: results/, practice/ and tuning/ all use it, and none of it imports Ray.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """One metric the search optimizes, in one direction."""

    metric: str
    mode: str  # "min" or "max"

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` is strictly better than `b`."""
        return a < b if self.mode == "min" else a > b

    def as_minimized(self, value: float) -> float:
        """The value as a quantity to minimize (negated for max): what dominance and hypervolume compare."""
        return value if self.mode == "min" else -value


_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_./-]*)\s*(<=|>=)\s*(\S+)\s*$")
OPERATORS = ("<=", ">=")


@dataclass(frozen=True)
class Constraint:
    """A bound on a reported metric: `metric <= bound` or `metric >= bound`."""

    metric: str
    op: str  # "<=" or ">="
    bound: float

    @classmethod
    def parse(cls, text: Any) -> Constraint:
        """A constraint from its spec form, or ValueError saying what the form is."""
        found = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        bound = None
        if found:
            try:
                bound = float(found.group(3))
            except ValueError:
                bound = None
        if found is None or bound is None or not math.isfinite(bound):
            raise ValueError(
                f"{text!r} is not a constraint; write METRIC <= NUMBER or METRIC >= NUMBER, e.g. "
                "'latency_ms <= 5.0'"
            )
        return cls(found.group(1), found.group(2), bound)

    def holds(self, value: Any) -> bool:
        """Whether a reported value satisfies the constraint (a missing, NaN or inf value never does)."""
        if value is None or not math.isfinite(value):
            return False
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def feasible(values: Mapping[str, Any], constraints: Sequence[Constraint]) -> bool:
    """Whether reported `values` satisfy every constraint."""
    return all(c.holds(values.get(c.metric)) for c in constraints)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether minimized point `a` Pareto-dominates `b`: no worse in every objective, better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_ranks(points: Sequence[Sequence[float] | None]) -> list[int | None]:
    """The non-dominated sorting rank of each minimized point (0: on the front; 1: on the front once rank 0 is
    removed; ...), None for a point that is None (no point: unfinished, infeasible or not finite). Equal points
    share a rank. O(n^2) comparisons per front, in NumPy: a 2,000-trial run ranks in well under a second."""
    import numpy as np

    index = [i for i, p in enumerate(points) if p is not None]
    ranks: list[int | None] = [None] * len(points)
    if not index:
        return ranks
    values = np.asarray([points[i] for i in index], dtype=float)
    # dominated_by[i, j]: j dominates i
    no_worse = (values[None, :, :] <= values[:, None, :]).all(axis=2)
    better = (values[None, :, :] < values[:, None, :]).any(axis=2)
    dominated_by = no_worse & better
    left = np.ones(len(index), dtype=bool)
    rank = 0
    while left.any():
        front = left & ~(dominated_by & left[None, :]).any(axis=1)
        for k in np.flatnonzero(front):
            ranks[index[k]] = rank
        left &= ~front
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within one front: how far its neighbours lie along each objective
    (the front's extremes are infinitely far). A larger distance is a lonelier, more valuable point."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for j in range(1, n - 1):
            distance[order[j]] += (points[order[j + 1]][k] - points[order[j - 1]][k]) / (high - low)
    return distance


def nondominated_order(points: Sequence[Sequence[float] | None]) -> list[int]:
    """The indices of `points` (minimized), best first: by Pareto rank, then by crowding distance within a rank
    (larger first), then by index; points that are None (no finite value) last, in index order. NSGA-II's order,
    and what a multi-objective ASHA ranks a rung by (as Syne Tune's MOASHA does)."""
    ranks = pareto_ranks(points)
    crowding: dict[int, float] = {}
    for rank in {r for r in ranks if r is not None}:
        members = [i for i, r in enumerate(ranks) if r == rank]
        crowding.update(zip(members, crowding_distances([points[i] for i in members]), strict=True))
    return sorted(
        range(len(points)),
        key=lambda i: (ranks[i] is None, ranks[i] or 0, -crowding.get(i, 0.0), i),
    )


def point_of(values: Mapping[str, Any], objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The minimized point of reported `values`, or None if an objective is missing or not finite."""
    point = []
    for objective in objectives:
        value = values.get(objective.metric)
        if value is None or not math.isfinite(value):
            return None
        point.append(objective.as_minimized(float(value)))
    return tuple(point)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume of minimized objective space that `points` dominate, bounded by `reference` (a point worse than
    every point in every objective). Exact for 2 objectives (a sweep); for more, Monte Carlo-free inclusion by
    slicing (exponential in the objectives, fine for the 2-4 an HPO search has)."""
    kept = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    if not kept:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in kept)
    # slice along the last objective: each slab's area is the hypervolume of the points at or below it
    kept.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, point in enumerate(kept):
        top = kept[i + 1][-1] if i + 1 < len(kept) else reference[-1]
        if top > point[-1]:
            volume += (top - point[-1]) * hypervolume([p[:-1] for p in kept[: i + 1]], reference[:-1])
    return volume
