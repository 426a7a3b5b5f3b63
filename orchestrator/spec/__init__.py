"""The job spec: the typed model (model.py) of a YAML file (yaml_load.py), validated once, before anything runs.

Its vocabulary (algorithms, schedulers, distributions, storage schemes, workloads) comes from the registries of
the packages below it; reference.py renders that vocabulary as the README's tables.
"""

from orchestrator.errors import SpecError
from orchestrator.spec.model import (
    DEFAULT_ENSEMBLE_METHOD,
    ENSEMBLE_METHODS,
    EnsembleSpec,
    JobSpec,
    json_schema,
    load_spec,
    parse_spec,
)
from orchestrator.spec.workload_ref import check_against_workload, check_model_builds

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
