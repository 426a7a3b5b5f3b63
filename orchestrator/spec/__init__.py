"""The job spec: the typed model (model.py) of a YAML file (yaml_load.py), validated once, before anything runs.

Its vocabulary (algorithms, schedulers, distributions, storage schemes, workloads) comes from the registries of
the packages below it; reference.py renders that vocabulary as the README's tables.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from orchestrator.errors import SpecError

if TYPE_CHECKING:
    from orchestrator.spec.ensembles import DEFAULT_ENSEMBLE_METHOD, ENSEMBLE_METHODS
    from orchestrator.spec.model import EnsembleSpec, JobSpec, json_schema, load_spec, parse_spec
    from orchestrator.spec.workload_ref import check_against_workload, check_model_builds

# Each name's module, imported on first use: `hpo`'s parser names the ensemble methods without loading the model
# (pydantic, the search vocabulary), and a command handed to `hpo up`'s daemon loads neither.
_HOME = {
    "JobSpec": "model",
    "EnsembleSpec": "model",
    "load_spec": "model",
    "parse_spec": "model",
    "json_schema": "model",
    "check_against_workload": "workload_ref",
    "check_model_builds": "workload_ref",
    "ENSEMBLE_METHODS": "ensembles",
    "DEFAULT_ENSEMBLE_METHOD": "ensembles",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"orchestrator.spec.{_HOME[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "JobSpec",
    "EnsembleSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "json_schema",
    "check_against_workload",
    "check_model_builds",
    "ENSEMBLE_METHODS",
    "DEFAULT_ENSEMBLE_METHOD",
]
