"""hpo-orchestrator: hyperparameter optimization jobs on Ray.

Public API (imported lazily, so `hpo validate` does not pay for importing Ray and torch):
    load_spec(path) -> JobSpec          validate a YAML spec (raises SpecError)
    plan(spec, results_uri) -> Plan     what would run, without starting anything
    run(spec, ...) -> RunSummary        run a job on an embedded Ray (or a given address)
    load_results(uri), load_trials(uri) the run's tables as pyarrow (as_pandas=True for pandas), local or s3://
    summarize(uri) -> RunSummary        a stored run's best row and trial counts
    Workload, Splits                    the workload protocol for your own models
"""

from __future__ import annotations

import importlib

__all__ = [
    "load_spec",
    "parse_spec",
    "SpecError",
    "JobSpec",
    "plan",
    "run",
    "RunSummary",
    "load_results",
    "load_trials",
    "summarize",
    "Workload",
    "Splits",
]
__version__ = "0.1.0"

_HOME = {
    "load_spec": "orchestrator.spec",
    "parse_spec": "orchestrator.spec",
    "SpecError": "orchestrator.spec",
    "JobSpec": "orchestrator.spec",
    "plan": "orchestrator.runner",
    "run": "orchestrator.runner",
    "RunSummary": "orchestrator.summary",
    "summarize": "orchestrator.summary",
    "load_results": "orchestrator.results",
    "load_trials": "orchestrator.results",
    "Workload": "orchestrator.workloads",
    "Splits": "orchestrator.workloads",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
