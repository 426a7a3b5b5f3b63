"""Spec checks that need the workload: it resolves, knows every hyperparameter, reports the metric, and the
trial runner's own hyperparameters are in range. Run by `parse_spec` (and so by `hpo validate`)."""

from __future__ import annotations

import difflib

from orchestrator.spec_parts import SpecError


def check_against_workload(spec):
    """Checks that need the workload: it resolves, knows every hyperparameter, and reports the metric."""
    from orchestrator.workloads import OPTIMIZERS, WorkloadError, resolve_workload

    try:
        workload = resolve_workload(spec.workload)
    except WorkloadError as exc:
        raise SpecError(f"workload: {exc}") from None
    known = list(workload.defaults())
    for section in ("space", "fixed"):
        for name in getattr(spec.search, section):
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise SpecError(
                    f"search.{section}.{name}: workload {workload.name} has no such hyperparameter "
                    f"({hint}known: {', '.join(known)})"
                )
    if spec.search.metric not in workload.metrics:
        close = difflib.get_close_matches(spec.search.metric, workload.metrics, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(
            f"search.metric: {spec.search.metric!r} is not reported by workload {workload.name} "
            f"({hint}it reports: {', '.join(workload.metrics)})"
        )
    optimizer = spec.search.fixed.get("optimizer")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise SpecError(
            f"search.fixed.optimizer: {optimizer!r} is not allowed (allowed: {', '.join(OPTIMIZERS)})"
        )
    if "optimizer" in spec.search.space:
        kind, values = spec.search.distribution("optimizer")
        bad = [v for v in values if v not in OPTIMIZERS] if kind == "choice" else [kind]
        if bad:
            raise SpecError(
                f"search.space.optimizer: {bad[0]!r} is not allowed (allowed: {', '.join(OPTIMIZERS)})"
            )
    batch = spec.search.fixed.get("batch_size", workload.defaults()["batch_size"])
    if "batch_size" not in spec.search.space and (not isinstance(batch, int) or batch < spec.train.workers):
        raise SpecError(
            f"search.fixed.batch_size: {batch!r} must be an integer of at least train.workers "
            f"({spec.train.workers}); it is the global batch, split across workers"
        )
    _check_training_ranges(spec)
    return workload


# The trial runner's own hyperparameters: values torch would refuse only once a trial has started.
_TRAINING_RANGES = {"lr": (0.0, False, None), "weight_decay": (0.0, True, None), "momentum": (0.0, True, 1.0)}


def _check_training_ranges(spec) -> None:
    for name, (low, low_ok, high) in _TRAINING_RANGES.items():
        if name in spec.search.fixed:
            where, values = f"search.fixed.{name}", [spec.search.fixed[name]]
        elif name in spec.search.space:
            kind, args = spec.search.distribution(name)
            where, values = f"search.space.{name}.{kind}", list(args)
        else:
            continue
        for value in values:
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
