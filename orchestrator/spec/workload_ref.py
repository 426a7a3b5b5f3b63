"""Spec checks that need the workload: it resolves, knows every hyperparameter, reports the metric, and the
training loop's own hyperparameters are in range. Run by `parse_spec` (and so by `hpo validate`)."""

from __future__ import annotations

import traceback

from orchestrator.errors import SpecError, did_you_mean, not_allowed
from orchestrator.workloads import (
    BUILTIN_WORKLOADS,
    TRAINING_CHOICES,
    TRAINING_RANGES,
    Workload,
    WorkloadError,
    resolve_workload,
)


def check_against_workload(spec) -> Workload:
    """Checks that need the workload: it resolves, knows every hyperparameter, and reports every objective's
    and constraint's metric."""
    try:
        workload = resolve_workload(spec.workload)
    except WorkloadError as exc:
        raise SpecError(f"workload: {exc}") from None
    known = list(workload.defaults())
    space = spec.search.hyperparameters
    for section, names in (("space", space.names), ("fixed", spec.search.fixed)):
        for name in names:
            if name not in known:
                raise SpecError(
                    f"search.{section}.{name}: workload {workload.name} has no such hyperparameter "
                    f"({did_you_mean(name, known)}known: {', '.join(known)})"
                )
    names = workload.metric_names
    for metric in spec.search.metrics:
        if metric not in names:
            raise SpecError(
                f"search.metric: {metric!r} is not reported by workload {workload.name} "
                f"({did_you_mean(metric, names)}it reports: {', '.join(names)})"
            )
    for text, bound in zip(spec.search.constraints, spec.search.bounds, strict=True):
        if bound.metric not in names:
            raise SpecError(
                f"search.constraints: {text!r} bounds {bound.metric!r}, which workload {workload.name} does not "
                f"report ({did_you_mean(bound.metric, names)}it reports: {', '.join(names)})"
            )
    if not workload.uses_standard_loop:  # the rest are the standard loop's own hyperparameters
        return workload
    for name, allowed in TRAINING_CHOICES.items():
        if name in spec.search.fixed and spec.search.fixed[name] not in allowed:
            raise SpecError(not_allowed(spec.search.fixed[name], allowed, f"search.fixed.{name}: "))
        for leaf in space.leaves_of(name):
            values = leaf.dist.finite_values()
            bad = [leaf.dist.name] if values is None else [v for v in values if v not in allowed]
            if bad:
                raise SpecError(not_allowed(bad[0], allowed, f"search.space.{name}: "))
    batch = spec.search.fixed.get("batch_size", workload.defaults()["batch_size"])
    if "batch_size" not in space.names and (not isinstance(batch, int) or batch < spec.train.workers):
        raise SpecError(
            f"search.fixed.batch_size: {batch!r} must be an integer of at least train.workers "
            f"({spec.train.workers}); it is the global batch, split across workers"
        )
    _check_training_ranges(spec)
    return workload


def _check_training_ranges(spec) -> None:
    space = spec.search.hyperparameters
    for name, (low, low_ok, high) in TRAINING_RANGES.items():
        if name in spec.search.fixed:
            places = [(f"search.fixed.{name}", [spec.search.fixed[name]])]
        else:
            places = [
                (f"search.space.{name}.{leaf.dist.name}", leaf.dist.extremes())
                for leaf in space.leaves_of(name)
            ]
        for where, value in ((where, value) for where, values in places for value in values):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (
                not number
                or value < low
                or (value == low and not low_ok)
                or (high is not None and value >= high)
            ):
                bound = f"{'>=' if low_ok else '>'} {low:g}" + (
                    f" and < {high:g}" if high is not None else ""
                )
                raise SpecError(f"{where}: {value!r} is out of range; {name} must be a number {bound}")


def check_model_builds(spec, workload: Workload) -> None:
    """Build a user workload's model once, with the spec's middle config, so a bug in build_model stops
    `hpo validate` and `hpo run` before anything is searched instead of failing every trial. Built-in
    workloads are tested; they are not built here (validating a spec that uses one stays fast)."""
    if workload.build_model is None or spec.workload in BUILTIN_WORKLOADS:
        return
    try:
        workload.build_model(spec.middle_config(workload))
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise SpecError(
            f"workload: {spec.workload}: build_model raised {type(error).__name__}: {error}{at}; fix it before "
            "searching"
        ) from None
