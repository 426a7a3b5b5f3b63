"""hpo-orchestrator: hyperparameter optimization jobs on Ray.

Public API (each name is imported on first use, so `import orchestrator` does not import Ray or torch):
    load_spec(path) -> JobSpec          validate a YAML spec (raises SpecError)
    parse_spec(mapping) -> JobSpec      the same for an already-parsed mapping
    plan(spec, results_uri) -> Plan     what would run, without starting anything
    run(spec, ...) -> RunSummary        run a job on an embedded Ray (or a given address)
    session(num_cpus=None)              `with orchestrator.session():` one embedded Ray kept warm across runs
    resume(uri, ...) -> RunSummary      continue a run whose driver died, from its storage
    load_results(uri), load_trials(uri) the run's tables as pyarrow (as_pandas=True for pandas), local or s3://
    result_uris(uri) -> list[str]       the files of the results table now, for polars/duckdb/pyarrow
    ResultsDamaged                      a stored run's file is damaged (the message names it)
    summarize(uri) -> RunSummary        a stored run's best row and trial counts
    Workload, Splits                    the workload protocol for your own models
    CheckpointState                     what Workload.predict is given: a trial's checkpoint and .config
    TrainContext, TrainingError         what your own training loop (Workload.train) is given, and its errors
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
    "session",
    "resume",
    "RunSummary",
    "load_results",
    "load_trials",
    "result_uris",
    "ResultsDamaged",
    "summarize",
    "Workload",
    "Splits",
    "CheckpointState",
    "TrainContext",
    "TrainingError",
]
__version__ = "0.1.0"

# name -> the module that defines it; importing that module is what costs (Ray, torch), so it waits for first use
_HOME = {
    "load_spec": "orchestrator.spec",
    "parse_spec": "orchestrator.spec",
    "SpecError": "orchestrator.errors",
    "JobSpec": "orchestrator.spec",
    "plan": "orchestrator.api",
    "run": "orchestrator.api",
    "session": "orchestrator.api",
    "resume": "orchestrator.api",
    "RunSummary": "orchestrator.results",
    "summarize": "orchestrator.results",
    "load_results": "orchestrator.results",
    "load_trials": "orchestrator.results",
    "result_uris": "orchestrator.results",
    "ResultsDamaged": "orchestrator.errors",
    "Workload": "orchestrator.workloads",
    "Splits": "orchestrator.workloads",
    "CheckpointState": "orchestrator.workloads",
    "TrainContext": "orchestrator.train.context",
    "TrainingError": "orchestrator.train.context",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
