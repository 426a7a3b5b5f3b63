"""A run's summary: the best (trial, iteration) row and trial counts, from the run's tables."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pyarrow as pa

from orchestrator.errors import ResultsNotFound
from orchestrator.results.reader import (
    best_row,
    config_of,
    load_results,
    load_trials,
    pareto_front,
    search_metric,
)
from orchestrator.results.schema import GPU_UTIL


@dataclass(frozen=True)
class RunSummary:
    results_uri: str
    num_trials: int
    best: dict | None  # trial_id, iteration, metric (its value), config; None if no trial reported a metric
    metric: str
    mode: str
    statuses: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    upload_pending: int = 0  # items an outage left in the local spool (see `hpo results sync`)
    spool_dir: str | None = None
    status: str = "finished"  # run.json's: finished | interrupted | stopped | failed | budget_exhausted
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT 2, SIGTERM 15), if one did
    reason: str | None = None  # why a stopped or failed run ended early, in a line
    ledger: dict = field(
        default_factory=dict
    )  # the job's totals: trial/CPU/GPU hours, cost (budget/ledger.py)
    budget_exhausted: str | None = None  # the limit reached, e.g. "cost 0.51 of 0.5"
    # several objectives: the Pareto front's trials (trial_id, values, config), best first by the primary one
    front: list[dict] | None = None

    def to_json(self) -> dict:
        return asdict(self)


LEDGER_SUMS = ("wall_s", "cpu_s", "gpu_s")
UNTYPED_NODE = (
    "local"  # the node type of an embedded node, or of a trial with none recorded (ray_compat uses it)
)


def ledger_totals(entries, *, priced: bool) -> dict:
    """A job's totals from its trials' ledger entries (trials.parquet's `wall_s`, `cpu_s`, `gpu_s`, `gpu_util`,
    `cost`, `node_type`), summed in trial order: the one computation behind run.json's `ledger`, the run's summary
    (`spent: ...`) and `hpo results show`, so the three print one number."""
    sums = dict.fromkeys(LEDGER_SUMS, 0.0)
    costs: dict[str, float] = {}
    idle_s = measured_s = 0.0  # GPU-seconds held but idle, of those whose utilization was measured
    for entry in entries:
        for key in LEDGER_SUMS:
            sums[key] += entry.get(key) or 0.0
        if entry.get(GPU_UTIL) is not None and entry.get("gpu_s"):
            measured_s += entry["gpu_s"]
            idle_s += entry["gpu_s"] * max(0.0, 1.0 - entry[GPU_UTIL] / 100.0)
        if entry.get("cost") is not None:
            kind = entry.get("node_type") or UNTYPED_NODE
            costs[kind] = costs.get(kind, 0.0) + entry["cost"]
    return {
        "trial_hours": round(sums["wall_s"] / 3600, 6),
        "cpu_hours": round(sums["cpu_s"] / 3600, 6),
        "gpu_hours": round(sums["gpu_s"] / 3600, 6),
        # of the GPU-hours, those whose trials measured their GPU (NVML), and how many of these were idle
        "gpu_hours_measured": round(measured_s / 3600, 6),
        "gpu_idle_hours": round(idle_s / 3600, 6) if measured_s else None,
        "cost": round(sum(costs.values()), 6) if priced else None,
        "cost_by_node_type": {k: round(v, 6) for k, v in sorted(costs.items())} if priced else {},
    }


def format_config(config: dict) -> str:
    """`lr=0.001 hidden=64 ...`: a config on one line, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _summary(
    results_uri, best_row_: dict | None, trials: pa.Table, wall_time_s: float, **outcome
) -> RunSummary:
    metric, mode = search_metric(trials)
    statuses: dict[str, int] = {}
    for status in trials.column("status").to_pylist():
        statuses[status] = statuses.get(status, 0) + 1
    best = None
    if best_row_ is not None:
        best = {
            "trial_id": best_row_["trial_id"],
            "iteration": best_row_["iteration"],
            "metric": best_row_[metric],
            "config": config_of(best_row_),
        }
    return RunSummary(
        results_uri,
        trials.num_rows,
        best,
        metric,
        mode,
        statuses,
        round(wall_time_s, 2),
        **outcome,
        front=pareto_front(trials),
    )


def summarize(results_uri: str, wall_time_s: float = 0.0, options=None) -> RunSummary:
    """The summary of a stored run, read back through the results reader."""
    trials = load_trials(results_uri, options=options)
    try:
        best = best_row(load_results(results_uri, options=options))
    except ResultsNotFound:
        best = None
    return _summary(results_uri, best, trials, wall_time_s)


def summarize_run(
    results_uri: str, schema, best: dict | None, records: list[dict], wall_time_s: float = 0.0, **outcome
) -> RunSummary:
    """The summary of a run just written, from its best row as it was reported (tracking/progress.py's BestRow,
    the same row `summarize` finds in the stored table) and its trial records (the store may be unreachable);
    `outcome`: how it ended (RunSummary's status, ledger, uploads pending, ...)."""
    trials = pa.Table.from_pylist(sorted(records, key=lambda r: r["trial_id"]), schema=schema.trials_schema())
    trials = schema.with_front(trials)
    return _summary(results_uri, best, trials, wall_time_s, **outcome)
