"""Search spaces, flat or conditional: what a spec's `search.space` describes, as one value every searcher reads.

A hyperparameter is a distribution (distributions.py), or a choice among named branches, each with
hyperparameters of its own:

    optimizer:
      choice:
        adam: {lr: {loguniform: [1.0e-4, 1.0e-2]}}
        sgd:  {lr: {loguniform: [1.0e-3, 1.0e-1]}, momentum: {uniform: [0.8, 0.99]}}

A trial's config holds the branch's name (`optimizer: sgd`) and only the hyperparameters of the branches taken
(`lr`, `momentum`); a name used in several branches is one config key and one results column, null where no
branch that has it is taken.

Searchers do not see names but keys: one per place a distribution is written (a leaf), so that `lr` under adam
and `lr` under sgd, with different ranges, are two parameters to a searcher (`lr|optimizer=adam`,
`lr|optimizer=sgd`), as Optuna's and HyperOpt's conditional spaces keep them apart. In a flat space a key is
its name. `keyed(config)` and `config_of(keyed)` translate; `config_of` keeps only the active keys, so a searcher
that samples every leaf (random, quasi-random, HyperOpt) gives the same kind of config as one that samples only
the branch taken (Optuna's define-by-run).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Tag,
    model_validator,
)

from orchestrator.errors import did_you_mean
from orchestrator.search.distributions import (
    DISTRIBUTIONS,
    Choice,
    Distribution,
    LogRandInt,
    LogUniform,
    RandInt,
    Uniform,
    as_type,
)

BRANCHES_TAG = "branches"  # the union tag of a choice among branches (a `choice:` that holds a mapping)
KEY_SEP = "|"  # lr|optimizer=sgd: the leaf lr under optimizer's branch sgd


def _tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return BRANCHES_TAG if isinstance(value, Branches) else type(value).name
    if isinstance(value, dict) and len(value) == 1:
        key, inner = next(iter(value.items()))
        if key == "choice" and isinstance(inner, dict):
            return BRANCHES_TAG
        return key if key in DISTRIBUTIONS else None
    return None


def _check_shape(value: Any) -> Any:
    names = list(DISTRIBUTIONS)
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            f"must be one distribution such as {{loguniform: [1.0e-4, 1.0e-1]}}, got {value!r}"
            f" (distributions: {', '.join(names)}; a choice of branches is a mapping under choice)"
        )
    key = next(iter(value))
    if key not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {key!r} ({did_you_mean(key, names)}distributions: {', '.join(names)})"
        )
    return value


class Branches(BaseModel):
    """A choice among named branches, each searching hyperparameters of its own: `{choice: {adam: {lr: ...},
    sgd: {lr: ..., momentum: ...}}}`. The trial's config holds the branch's name and that branch's
    hyperparameters only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choice: dict[str, dict[str, SearchedHyperparameter]]

    @model_validator(mode="before")
    @classmethod
    def _branches(cls, data: Any) -> Any:
        branches = data.get("choice") if isinstance(data, dict) else None
        if isinstance(branches, dict):
            if not branches:
                raise ValueError("is an empty mapping; give at least one branch")
            for name, entries in branches.items():
                if not isinstance(name, str) or isinstance(name, bool):
                    raise ValueError(
                        f"branch name {name!r} is not a string ({type(name).__name__}); quote it "
                        f"({str(name)!r}): a branch's name is the value its hyperparameter takes"
                    )
                if not entries:
                    raise ValueError(
                        f"branch {name!r} is empty; give it at least one hyperparameter to search (an empty "
                        "branch is usually an indentation slip)"
                    )
                if not isinstance(entries, dict):
                    raise ValueError(
                        f"branch {name!r} must map hyperparameter names to distributions, got {entries!r}"
                    )
        return data

    name: ClassVar[str] = "choice"
    example: ClassVar[str] = "{adam: {lr: ...}, sgd: {lr: ..., momentum: ...}}"

    @property
    def chooser(self) -> Choice:
        """The distribution of the branch's name: each branch equally likely."""
        return Choice(choice=list(self.choice))

    def describe(self) -> str:
        inner = "; ".join(
            f"{branch}: {{{', '.join(f'{n}: {d.describe()}' for n, d in entries.items())}}}"
            for branch, entries in self.choice.items()
        )
        return f"choice of branches {{{inner}}}"


# A searched hyperparameter as a spec writes it: one of the registered distributions, picked by its key, or a
# choice among branches (`choice:` holding a mapping).
SearchedHyperparameter = Annotated[
    Union[  # type: ignore[misc]  # noqa: UP007
        tuple(Annotated[cls, Tag(name)] for name, cls in DISTRIBUTIONS.items())
        + (Annotated[Branches, Tag(BRANCHES_TAG)],)
    ],
    Discriminator(_tag),
    BeforeValidator(_check_shape),
]


Branches.model_rebuild()


@dataclass(frozen=True)
class Leaf:
    """One place a distribution is written: its searcher key, its config name, and the branches above it."""

    key: str
    name: str
    dist: Distribution  # a branching leaf's is a Choice of its branch names
    when: tuple[tuple[str, str], ...] = ()  # (name, branch) of each branch above it, outermost first
    branches: dict[str, tuple[Leaf, ...]] = field(default_factory=dict)  # a branching leaf's, by branch

    def where(self) -> str:
        """Where it is active, for messages: 'when optimizer is sgd'."""
        if not self.when:
            return "at the top level"
        return "when " + " and ".join(f"{n} is {b}" for n, b in self.when)

    def compatible(self, other: Leaf) -> bool:
        """Whether both can be active in one config (no branch above them differs)."""
        mine = dict(self.when)
        return all(mine.get(n, b) == b for n, b in other.when)


class SpaceError(ValueError):
    """A space that cannot be searched as written (the message names the hyperparameter)."""


class Space:
    """The searched hyperparameters: a tree of leaves (a flat space's leaves have no branches)."""

    def __init__(self, entries: Mapping[str, Distribution | Branches]):
        self.roots: tuple[Leaf, ...] = self._leaves(entries, ())
        self.leaves: tuple[Leaf, ...] = tuple(self._walk(self.roots))
        self.conditional = any(leaf.branches for leaf in self.leaves)
        self.by_key = {leaf.key: leaf for leaf in self.leaves}
        self.names: tuple[str, ...] = tuple(dict.fromkeys(leaf.name for leaf in self.leaves))
        self._check()

    @classmethod
    def _leaves(cls, entries: Mapping[str, Any], when: tuple) -> tuple[Leaf, ...]:
        leaves = []
        for name, entry in entries.items():
            key = name + "".join(f"{KEY_SEP}{n}={b}" for n, b in when)
            if isinstance(entry, Branches):
                branches = {
                    branch: cls._leaves(inner, (*when, (name, branch)))
                    for branch, inner in entry.choice.items()
                }
                leaves.append(Leaf(key, name, entry.chooser, when, branches))
            else:
                leaves.append(Leaf(key, name, entry, when))
        return tuple(leaves)

    @classmethod
    def _walk(cls, leaves: tuple[Leaf, ...]) -> Iterator[Leaf]:
        for leaf in leaves:
            yield leaf
            for inner in leaf.branches.values():
                yield from cls._walk(inner)

    def _check(self) -> None:
        for a, b in itertools.combinations(self.leaves, 2):
            if a.name == b.name and a.compatible(b):
                raise SpaceError(
                    f"{a.name!r} is searched twice where both can be active ({a.where()}, and {b.where()}); "
                    "search it in one place, or in branches of one choice"
                )
        for name in self.names:
            kinds = {leaf.dist.value_type for leaf in self.leaves_of(name)}
            if len(kinds) > 1:
                raise SpaceError(
                    f"{name!r} takes values of different types in different branches "
                    f"({', '.join(sorted(k.__name__ for k in kinds))}); it is one column: give it one type"
                )

    # -- names ----------------------------------------------------------------------------------------------
    def leaves_of(self, name: str) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.name == name]

    def value_type(self, name: str) -> type:
        return self.leaves_of(name)[0].dist.value_type

    def distribution(self, name: str) -> Distribution:
        """One distribution that covers every value `name` takes, for analysis (isolation plots, importance):
        its own where it is written once or the same everywhere; else the hull of its ranges (a choice: every
        value)."""
        dists = [leaf.dist for leaf in self.leaves_of(name)]
        if all(d == dists[0] for d in dists):
            return dists[0]
        if all(isinstance(d, Choice) for d in dists):
            return Choice(choice=list(dict.fromkeys(v for d in dists for v in d.choice)))
        bounds = [
            (min(d.choice), max(d.choice)) if isinstance(d, Choice) else tuple(d.args[:2]) for d in dists
        ]
        low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
        if all(d.log_scale for d in dists):
            return (
                LogRandInt(lograndint=[low, high])
                if dists[0].value_type is int
                else LogUniform(loguniform=[low, high])
            )
        return (
            RandInt(randint=[low, high])
            if dists[0].value_type is int
            else Uniform(uniform=[float(low), float(high)])
        )

    # -- configs --------------------------------------------------------------------------------------------
    def active(self, choose) -> Iterator[Leaf]:
        """The leaves a config activates, top down; `choose(leaf)` gives a branching leaf's value."""
        pending = list(self.roots)
        while pending:
            leaf = pending.pop(0)
            yield leaf
            if leaf.branches:
                pending[:0] = leaf.branches.get(choose(leaf), ())

    def config_of(self, keyed: Mapping[str, Any]) -> dict[str, Any]:
        """The config of a searcher's proposal (keys -> values): the active hyperparameters by name, each as its
        distribution states it. Keys that are no leaf's pass through."""
        values = {leaf.key: leaf.dist.canonical(keyed[leaf.key]) for leaf in self.leaves if leaf.key in keyed}
        config = {leaf.name: values[leaf.key] for leaf in self.active(lambda leaf: values.get(leaf.key))}
        config.update({k: v for k, v in keyed.items() if k not in self.by_key})
        return config

    def keyed(self, config: Mapping[str, Any], fill: bool = False) -> dict[str, Any]:
        """A config as a searcher's proposal: the active leaves' keys; with `fill`, every other leaf at its
        distribution's middle too (for searchers that take a value for every key)."""
        keyed = {leaf.key: config[leaf.name] for leaf in self.active(lambda leaf: config.get(leaf.name))}
        if fill:
            keyed.update({leaf.key: leaf.dist.middle() for leaf in self.leaves if leaf.key not in keyed})
        return keyed

    def from_row(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The config of a stored trial (its config columns by name, null where inactive): each value as the
        searcher proposed it (a choice's stored value may be its string form)."""
        config = {}
        for leaf in self.active(lambda leaf: config.get(leaf.name)):
            config[leaf.name] = leaf.dist.from_column(stored.get(leaf.name))
        return config

    def middle(self) -> dict[str, Any]:
        """A representative config: each distribution's middle (a choice of branches: its middle branch)."""
        config = {}
        for leaf in self.active(lambda leaf: config.get(leaf.name)):
            config[leaf.name] = leaf.dist.middle()
        return config

    def check_config(self, config: Mapping[str, Any]) -> str | None:
        """What is wrong with a config written in a spec (a start config), as 'name: reason', or None."""
        active = list(self.active(lambda leaf: config.get(leaf.name)))
        for leaf in active:
            if leaf.name not in config:
                where = "" if not leaf.when else f" (active {leaf.where()})"
                return (
                    f"gives no value for {leaf.name!r}{where}; a start config gives every searched "
                    f"hyperparameter that is active"
                )
            if not leaf.dist.takes(config[leaf.name]):
                return f"{leaf.name}: {config[leaf.name]!r} is not a value of {leaf.dist.describe()}; give one it can take"
        names = {leaf.name for leaf in active}
        for name in config:
            if name in self.names and name not in names:
                where = " or ".join(leaf.where() for leaf in self.leaves_of(name))
                return f"{name}: is active only {where}; leave it out of this config"
        return None

    def canonical(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A spec-written config with each value as its distribution states it (1 for a float range is 1.0)."""
        active = self.active(lambda leaf: config.get(leaf.name))
        return {
            leaf.name: leaf.dist.canonical(as_type(config[leaf.name], leaf.dist.value_type))
            for leaf in active
        }

    # -- enumeration (grid search) ----------------------------------------------------------------------------
    def finite(self) -> Leaf | None:
        """The first leaf with infinitely many values, or None if the space is finite."""
        return next((leaf for leaf in self.leaves if leaf.dist.finite_values() is None), None)

    def count(self, leaves: tuple[Leaf, ...] | None = None) -> int:
        """How many configs the space holds (finite spaces)."""
        leaves = self.roots if leaves is None else leaves
        return math.prod(
            sum(self.count(leaf.branches[v]) if leaf.branches else 1 for v in leaf.dist.finite_values())
            for leaf in leaves
        )

    def grid(self, leaves: tuple[Leaf, ...] | None = None) -> list[dict[str, Any]]:
        """Every config of a finite space, keyed; the first hyperparameter varies slowest."""
        leaves = self.roots if leaves is None else leaves
        points: list[dict[str, Any]] = [{}]
        for leaf in leaves:
            options = [
                {leaf.key: v, **inner}
                for v in leaf.dist.finite_values()
                for inner in (self.grid(leaf.branches[v]) if leaf.branches else [{}])
            ]
            points = [{**p, **o} for p in points for o in options]
        return points

    def describe(self, name: str) -> str:
        return " | ".join(f"{leaf.dist.describe()} {leaf.where()}" for leaf in self.leaves_of(name))
