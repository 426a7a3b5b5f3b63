"""`search.warm_start`: the finished trials of earlier runs, read from their tables (local or S3), as history
for a searcher that learns from results. They are not rerun, and not copied into the new run's tables: the new
run's run.json names the runs and how many trials they gave.

A warm start is only sound over the same space: each earlier run must search the same hyperparameters with the
same distributions (the first difference is named), and report every objective of this one. A trial counts if
it finished (completed, or stopped by ASHA) with a finite value for every objective at its last report: its
point, as in the front. Its constraint values come from that report too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.errors import ResultsNotFound, RunError, SpecError
from orchestrator.results import config_of, load_trials
from orchestrator.results.ops import stored_spec
from orchestrator.results.schema import FINISHED
from orchestrator.search.objectives import point_of


@dataclass(frozen=True)
class Earlier:
    """One finished trial of an earlier run: its searched config (keyed as a searcher proposes it:
    search/space.py) and its last report's metrics."""

    config: dict
    metrics: dict


@dataclass(frozen=True)
class WarmStart:
    runs: tuple[str, ...] = ()
    trials: tuple[Earlier, ...] = field(default_factory=tuple)

    def describe(self) -> dict:
        """What run.json records."""
        return {"runs": list(self.runs), "trials": len(self.trials)}


def load_warm_start(spec) -> WarmStart:
    """The history `spec.search.warm_start` names, or RunError naming the URI and what is wrong with it."""
    search = spec.search
    space = search.hyperparameters
    found: list[Earlier] = []
    for i, uri in enumerate(search.warm_start):
        where = f"search.warm_start[{i}]: {uri}"
        try:
            earlier = stored_spec(uri, spec.storage_options.s3())
            trials = load_trials(uri, options=spec.storage_options.s3()).to_pylist()
        except (ResultsNotFound, SpecError) as error:
            raise RunError(f"{where} is not a run hpo can read ({error}); give a run's results_uri") from None
        if getattr(earlier, "kind", "tune") != "tune":
            raise RunError(f"{where} is a kind: {earlier.kind} run, not a search")
        for name, dist in search.space.items():
            other = earlier.search.space.get(name)
            if other is None:
                raise RunError(f"{where} does not search {name!r}; a warm start needs the same space")
            if other != dist:
                raise RunError(
                    f"{where} searched {name!r} as {other.describe()}, this spec as {dist.describe()}; a warm "
                    "start needs the same space"
                )
        extra = sorted(set(earlier.search.space) - set(search.space))
        if extra:
            raise RunError(
                f"{where} also searched {extra[0]!r}, which this spec does not; a warm start needs the same space"
            )
        names = [
            name.removeprefix("last_") for name in (trials[0] if trials else {}) if name.startswith("last_")
        ]
        for objective in search.objectives:
            if trials and objective.metric not in names:
                raise RunError(
                    f"{where} has no {objective.metric!r} (its workload reports: {', '.join(names)})"
                )
        for t in trials:
            metrics = {m: t[f"last_{m}"] for m in names}
            if t["status"] in FINISHED and point_of(metrics, search.objectives) is not None:
                found.append(Earlier(space.keyed(space.from_row(config_of(t))), metrics))
    return WarmStart(tuple(search.warm_start), tuple(found))
