"""Workloads: the protocol (base.py), the built-ins (one module each), and the resolver that turns a spec's
`workload:` into a Workload, either a built-in by name or a user's "package.module:function".

BUILTIN_WORKLOADS is the one list of built-in names; a built-in's description is its factory's docstring.
The built-in modules import torch and scikit-learn only when a model or data is built, so resolving a
workload to validate a spec stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable

from orchestrator.errors import did_you_mean, working_directory
from orchestrator.workloads.anneal import anneal
from orchestrator.workloads.base import (
    LR_SCHEDULES,
    OPTIMIZERS,
    TRAINING_CHOICES,
    TRAINING_HYPERPARAMETERS,
    TRAINING_RANGES,
    CheckpointState,
    Splits,
    Workload,
    WorkloadError,
)
from orchestrator.workloads.charlm import charlm
from orchestrator.workloads.digits import digits_mlp
from orchestrator.workloads.digits_cnn import digits_cnn
from orchestrator.workloads.synthetic import synthetic

__all__ = [
    "Workload",
    "Splits",
    "CheckpointState",
    "WorkloadError",
    "resolve_workload",
    "describe_builtin",
    "BUILTIN_WORKLOADS",
    "TRAINING_HYPERPARAMETERS",
    "TRAINING_RANGES",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "TRAINING_CHOICES",
]

BUILTIN_WORKLOADS: dict[str, Callable[[], Workload]] = {
    "digits-mlp": digits_mlp,
    "digits-cnn": digits_cnn,
    "charlm": charlm,
    "synthetic": synthetic,
    "anneal": anneal,
}


def describe_builtin(name: str) -> str:
    """The first line of the built-in's factory docstring."""
    return (inspect.getdoc(BUILTIN_WORKLOADS[name]) or "").splitlines()[0]


def resolve_workload(name: str) -> Workload:
    """Return the built-in workload `name`, or call the user's "package.module:function"."""
    if name in BUILTIN_WORKLOADS:
        return BUILTIN_WORKLOADS[name]()
    if ":" not in name:
        raise WorkloadError(
            f"{name!r} is not a built-in workload ({did_you_mean(name, BUILTIN_WORKLOADS)}built-ins: "
            f"{', '.join(BUILTIN_WORKLOADS)}); a workload of your own is written 'package.module:function'"
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
    # The working directory is importable, as with `python -m` (console scripts leave it off sys.path): for
    # this import only; a run keeps it importable for its whole length (ray_support/driver.py).
    search_path = list(sys.path)
    sys.path.insert(0, working_directory())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            hint = f"; run hpo from the directory that holds {parts[0]}, or add that directory to PYTHONPATH"
        raise WorkloadError(
            f"cannot import module {module_name!r} ({type(exc).__name__}: {exc}){hint}"
        ) from None
    finally:
        sys.path[:] = search_path
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
