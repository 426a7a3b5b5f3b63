"""Workloads: what a trial trains. A small protocol, built-ins, and user `package.module:function` entry points.

A workload is a `Workload` value. The trial runner owns the training loop (optimizer, batches, DDP,
checkpoints, metrics); a workload only says how to build the model and the data from a config:

- `build_model(config)` returns a fresh `torch.nn.Module`. It is called after the trial's seed is set, so
  weight initialisation follows the trial seed.
- `load_data(config)` returns `Splits(train, val, test)`, each an `(inputs, targets)` pair of tensors. The
  split must not depend on the trial's seed, so that trials are comparable.
- `task` is "classification" (integer targets, cross-entropy, accuracy reported) or "regression" (float
  targets, mean squared error).
- `hyperparameters` maps every hyperparameter the workload understands to its default. A spec may search or
  fix only these names, so a misspelt one is caught before anything runs.

A user's own workload is a zero-argument function returning a `Workload`, named in the spec as
"package.module:function" (the current directory is importable, as with `python -m`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

__all__ = [
    "Workload",
    "Splits",
    "WorkloadError",
    "resolve_workload",
    "BUILTIN_WORKLOADS",
    "TRAINING_HYPERPARAMETERS",
]

# Hyperparameters the trial runner itself reads; every workload accepts them.
TRAINING_HYPERPARAMETERS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "optimizer": "adam",  # adam | sgd
    "momentum": 0.9,  # sgd only
}
OPTIMIZERS = ("adam", "sgd")


class Splits(NamedTuple):
    train: tuple[Any, Any]
    val: tuple[Any, Any]
    test: tuple[Any, Any]


@dataclass(frozen=True)
class Workload:
    name: str
    build_model: Callable[[Mapping[str, Any]], Any]
    load_data: Callable[[Mapping[str, Any]], Splits]
    task: Literal["classification", "regression"] = "classification"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    # Set for workloads that evaluate a function instead of training (the `synthetic` benchmark functions):
    # (config, epoch) -> metrics. build_model and load_data are then never called.
    objective: Callable[[Mapping[str, Any], int], dict[str, float]] | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics every epoch reports, in column order."""
        base = ("train_loss", "val_loss")
        return base + ("val_accuracy",) if self.task == "classification" else base

    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter this workload accepts, with its default."""
        return {**TRAINING_HYPERPARAMETERS, **self.hyperparameters}


class WorkloadError(ValueError):
    """A workload name that cannot be resolved; the message names the fix."""


def _digits_mlp() -> Workload:
    from orchestrator.workloads.digits import digits_mlp

    return digits_mlp()


def _synthetic() -> Workload:
    from orchestrator.workloads.synthetic import synthetic

    return synthetic()


BUILTIN_WORKLOADS: dict[str, Callable[[], Workload]] = {"digits-mlp": _digits_mlp, "synthetic": _synthetic}


def resolve_workload(name: str) -> Workload:
    """Return the built-in workload `name`, or call the user's "package.module:function"."""
    if name in BUILTIN_WORKLOADS:
        return BUILTIN_WORKLOADS[name]()
    if ":" not in name:
        close = difflib.get_close_matches(name, BUILTIN_WORKLOADS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise WorkloadError(
            f"{name!r} is not a built-in workload ({hint}built-ins: {', '.join(BUILTIN_WORKLOADS)});"
            " a workload of your own is written 'package.module:function'"
        )
    return _load_entry_point(name)


def _load_entry_point(name: str) -> Workload:
    module_name, _, attr = name.partition(":")
    parts = module_name.split(".")
    if not attr.isidentifier() or not all(p.isidentifier() for p in parts):
        raise WorkloadError(f"{name!r} is not of the form 'package.module:function'")
    # A workload path is code the user trusts, but a typo or a hostile spec must not reach the standard
    # library or this package (`os:fork`, `pdb:set_trace`, `orchestrator.cli:main` are zero-argument callables).
    if parts[0] in sys.stdlib_module_names or parts[0] in ("orchestrator", "builtins", "__main__"):
        raise WorkloadError(
            f"{name!r} names a module of Python or of hpo itself; a workload is a function in a "
            "module of your own ('package.module:function')"
        )
    if os.getcwd() not in sys.path:  # console scripts do not put the working directory on sys.path
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise WorkloadError(f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    factory = getattr(module, attr, None)
    if not isinstance(factory, types.FunctionType):
        raise WorkloadError(
            f"module {module_name!r} has no function {attr!r} (a plain Python function, not a "
            "class, a builtin or another callable)"
        )
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise WorkloadError(f"{name} must take no arguments (it returns a Workload)") from None
    try:
        workload = factory()
    except (Exception, SystemExit) as exc:
        raise WorkloadError(f"{name} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"{name} returned {type(workload).__name__}, not an orchestrator.workloads.Workload"
        )
    return workload
