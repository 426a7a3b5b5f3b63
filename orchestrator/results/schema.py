"""The results schema: the only place that knows column names and types.

`results/` holds one row per (trial, reported iteration); `trials.parquet` one row per trial. Column types
come from the spec (a loguniform is float64, a randint int64, a choice of ints int64...), so every part file of
a run has the same schema and pandas, polars and duckdb read the dataset without coercion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from orchestrator.results.layout import ITERATION_KEY
from orchestrator.search.distributions import scalar_type
from orchestrator.search.objectives import Constraint, Objective, feasible, pareto_ranks, point_of

SCHEMA_VERSION = "1"
CONFIG_PREFIX = "config/"
# Columns that vary between otherwise identical runs: wall-clock, and which attempt of a retried trial produced
# the row (a retry continues from the checkpoint bit-identically). Everything else is deterministic.
TIMING_COLUMNS = ("epoch_time_s", "time_total_s", "timestamp")
CHECKPOINT_FALLBACK = (
    "checkpoint_fallback"  # in a result: the damaged checkpoints a restore passed over (a line)
)
# What a trial's GPU did (train/gpu_meter.py), sent with its reports and kept in its ledger entry: NVML
# utilization in percent (null: not measured) and the allocator's peak, in GiB
GPU_UTIL, GPU_MEM_PEAK = "gpu_util", "gpu_mem_peak_gb"
REPORTED_AT = "reported_at"  # a report's wall-clock time (seconds since the epoch), the rows' `timestamp`
RUN_VARYING_COLUMNS = TIMING_COLUMNS + ("attempt",)
LINEAGE_COLUMNS = ("parent_trial", "exploited_at")  # PBT: which trial's checkpoint a row's training continues
# The rows' columns that are not a reported metric nor a hyperparameter (rows_schema lays them out)
ROW_BOOKKEEPING = ("trial_id", "iteration", "trial_seed", "attempt", *TIMING_COLUMNS, *LINEAGE_COLUMNS)
# trials.parquet's columns that vary between otherwise identical runs: where and how long each trial ran
TRIAL_VARYING_COLUMNS = (
    "node_id",
    "node_type",
    "wall_s",
    "cpu_s",
    "gpu_s",
    GPU_UTIL,
    GPU_MEM_PEAK,
    "cost",
    "retries",
    "preemptions",
)
FINISHED = (
    "completed",
    "stopped_early",
)  # of a trial's statuses: running, completed, stopped_early, error, cancelled


def trial_point(record: Mapping[str, Any], objectives) -> tuple[float, ...] | None:
    """A trial record's point (its objectives at its last report, minimized) if it counts for the front: it
    finished (completed or stopped early), is not infeasible, and reported every objective finitely; else None."""
    if record["status"] not in FINISHED or record.get("feasible") is False:
        return None
    return point_of({o.metric: record.get(f"last_{o.metric}") for o in objectives}, objectives)


def metric_columns(schema: pa.Schema) -> list[str]:
    """The metrics the trials reported, in the order of a results table's `schema` (rows_schema's)."""
    return [
        f.name
        for f in schema
        if f.name not in ROW_BOOKKEEPING
        and not f.name.startswith(CONFIG_PREFIX)
        and pa.types.is_floating(f.type)
    ]


def scoreable(value) -> bool:
    """A metric value that can be the best: a finite number (NaN and inf are recorded, never the best)."""
    return value is not None and math.isfinite(value)


ARROW_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def config_type(value_type: type) -> pa.DataType:
    """Arrow type of a hyperparameter column whose values are of Python type `value_type`."""
    return ARROW_TYPES[value_type]


def as_column_value(value: Any, dtype: pa.DataType) -> Any:
    """`value` as a column of type `dtype` stores it (metrics and hyperparameters)."""
    if value is None:
        return None
    if pa.types.is_string(dtype):
        return str(value)
    if pa.types.is_floating(dtype):
        return float(value)
    if pa.types.is_integer(dtype):
        return int(value)
    return value


@dataclass(frozen=True)
class ResultsSchema:
    metrics: tuple[str, ...]  # every metric the workload reports, in order
    config: tuple[tuple[str, pa.DataType], ...]  # (hyperparameter, type), searched then fixed
    metric: str  # the search metric: the primary objective, what "best" ranks by
    mode: str
    objectives: tuple[Objective, ...] = ()  # with several objectives, all of them (the primary first)
    constraints: tuple[Constraint, ...] = ()
    lineage: bool = (
        False  # PBT: each row says which trial's checkpoint its training continues (LINEAGE_COLUMNS)
    )

    @classmethod
    def for_spec(cls, spec, metrics: tuple[str, ...]) -> ResultsSchema:
        space = spec.search.hyperparameters  # a conditional space's names once each (null where inactive)
        config = [(name, config_type(space.value_type(name))) for name in space.names]
        config += [(name, config_type(scalar_type([value]))) for name, value in spec.search.fixed.items()]
        search = spec.search
        several = search.objectives if len(search.objectives) > 1 else ()
        return cls(
            tuple(metrics),
            tuple(config),
            search.primary.metric,
            search.primary.mode,
            several,
            search.bounds,
            lineage=spec.scheduler.kind.adapts_configs,
        )

    def _metadata(self) -> dict[bytes, bytes]:
        meta = {
            b"hpo.schema_version": SCHEMA_VERSION.encode(),
            b"hpo.metric": self.metric.encode(),
            b"hpo.mode": self.mode.encode(),
        }
        if self.objectives:
            meta[b"hpo.objectives"] = json.dumps([[o.metric, o.mode] for o in self.objectives]).encode()
        if self.constraints:
            meta[b"hpo.constraints"] = json.dumps([str(c) for c in self.constraints]).encode()
        return meta

    def feasible(self, values: Mapping[str, Any]) -> bool:
        """Whether a report (or a trial's last one) satisfies every constraint."""
        return feasible(values, self.constraints)

    def _config_fields(self) -> list[pa.Field]:
        return [pa.field(CONFIG_PREFIX + name, dtype) for name, dtype in self.config]

    def rows_schema(self) -> pa.Schema:
        fields = [pa.field("trial_id", pa.string(), nullable=False), pa.field("iteration", pa.int64(), False)]
        fields += [pa.field(m, pa.float64()) for m in self.metrics]
        fields += self._config_fields()
        fields += [
            pa.field("trial_seed", pa.int64()),
            pa.field("attempt", pa.int64()),
            pa.field("epoch_time_s", pa.float64()),
            pa.field("time_total_s", pa.float64()),
            pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        ]
        if self.lineage:
            fields += [pa.field(LINEAGE_COLUMNS[0], pa.string()), pa.field(LINEAGE_COLUMNS[1], pa.int64())]
        return pa.schema(fields, metadata=self._metadata())

    def trials_schema(self) -> pa.Schema:
        fields = [
            pa.field("trial_id", pa.string(), False),
            pa.field("status", pa.string()),
            pa.field("iterations", pa.int64()),
            pa.field("stopped_early", pa.bool_()),
            pa.field(f"best_{self.metric}", pa.float64()),
            pa.field("best_iteration", pa.int64()),
        ]
        fields += [pa.field(f"last_{m}", pa.float64()) for m in self.metrics]
        fields += self._config_fields()
        fields += [
            pa.field("trial_seed", pa.int64()),
            pa.field("checkpoint", pa.string()),
            pa.field("best_checkpoint", pa.string()),
            pa.field("error", pa.string()),
            pa.field("node_id", pa.string()),  # the Ray node that ran the trial (rank 0 under DDP)
            pa.field("retries", pa.int64()),  # failures retried (train.max_retries)
            pa.field(
                "preemptions", pa.int64()
            ),  # lost nodes (preempted, drained, dead): retried, not counted
            # the resource ledger (budget/ledger.py): what the trial held, for how long, at what price
            pa.field("node_type", pa.string()),
            pa.field("wall_s", pa.float64()),
            pa.field("cpu_s", pa.float64()),
            pa.field("gpu_s", pa.float64()),
            pa.field(GPU_UTIL, pa.float64()),  # null: no GPU, or no NVML to read
            pa.field(GPU_MEM_PEAK, pa.float64()),
            pa.field("cost", pa.float64()),  # null without budget.prices
        ]
        if self.constraints:  # whether the trial's last report satisfies every constraint (null: no report)
            fields.append(pa.field("feasible", pa.bool_()))
        if self.objectives:  # non-dominated sorting of the finished, feasible trials' points (with_front)
            fields += [pa.field("pareto_rank", pa.int64()), pa.field("on_front", pa.bool_())]
        return pa.schema(fields, metadata=self._metadata())

    def with_front(self, trials: pa.Table) -> pa.Table:
        """trials.parquet with each trial's Pareto rank and whether it is on the front, computed over every
        finished (completed or stopped early), feasible trial's point: its objectives at its last report. A
        table of one objective is returned as it is."""
        if not self.objectives:
            return trials
        needed = ["status", *(f"last_{o.metric}" for o in self.objectives)]
        needed += ["feasible"] if self.constraints else []
        points = [trial_point(record, self.objectives) for record in trials.select(needed).to_pylist()]
        ranks = pareto_ranks(points)
        at = trials.schema.get_field_index("pareto_rank")
        trials = trials.set_column(at, "pareto_rank", pa.array(ranks, pa.int64()))
        return trials.set_column(at + 1, "on_front", pa.array([rank == 0 for rank in ranks], pa.bool_()))

    def row(
        self,
        trial_id: str,
        result: Mapping[str, Any],
        config: Mapping[str, Any],
        parent: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """One results row from a reported Tune result and the trial's full config (the config in force when
        it trained this iteration); under PBT, `parent`: (trial, epoch) of the last exploit before it."""
        row: dict[str, Any] = {"trial_id": trial_id, "iteration": int(result[ITERATION_KEY])}
        row.update({m: as_column_value(result.get(m), pa.float64()) for m in self.metrics})
        row.update({CONFIG_PREFIX + n: as_column_value(config.get(n), t) for n, t in self.config})
        row["trial_seed"] = int(result["trial_seed"])
        row["attempt"] = int(result.get("attempt", 0))  # 0: the trial's first run; n: its n-th retry
        row["epoch_time_s"] = float(result.get("epoch_time_s", 0.0))
        row["time_total_s"] = float(result.get("time_total_s", 0.0))
        # when the trial reported (TrainContext's clock, to the ms; Tune's own `timestamp` is whole seconds)
        row["timestamp"] = int(float(result.get(REPORTED_AT, result.get("timestamp", 0))) * 1000)
        if self.lineage:
            row["parent_trial"], row["exploited_at"] = parent if parent else (None, None)
        return row

    def trial_record(
        self,
        trial_id: str,
        status: str,
        rows: TrialRows,
        config: Mapping[str, Any],
        max_epochs: int,
        checkpoints: tuple[str | None, str | None],
        error: str | None,
        node_id: str | None = None,
        retries: int = 0,
        preemptions: int = 0,
        ledger: Mapping[str, Any] | None = None,
    ) -> dict:
        """One trials.parquet row from what the trial reported (`rows`); checkpoints = (latest, best)."""
        record: dict[str, Any] = {
            "trial_id": trial_id,
            "iterations": rows.count,
            "checkpoint": checkpoints[0],
            "best_checkpoint": checkpoints[1],
            "error": error,
            "node_id": node_id,
            "retries": retries,
            "preemptions": preemptions,
            **(ledger or {}),
        }
        finished = status in FINISHED
        record["stopped_early"] = finished and rows.iteration < max_epochs
        record["status"] = "stopped_early" if record["stopped_early"] else status
        record[f"best_{self.metric}"] = rows.best[0] if rows.best else None
        record["best_iteration"] = rows.best[1] if rows.best else None
        record.update({f"last_{m}": rows.last.get(m) for m in self.metrics})
        if self.constraints:
            record["feasible"] = self.feasible(rows.last) if rows.count else None
        record.update({CONFIG_PREFIX + n: as_column_value(config.get(n), t) for n, t in self.config})
        record["trial_seed"] = rows.seed
        return record

    def trial_rows(self) -> TrialRows:
        return TrialRows(self.metric, self.mode, self.metrics, self.constraints)


class TrialRows:
    """What a trial record needs of the trial's rows, kept as they arrive instead of the rows themselves (a run of
    10,000 trials x 100 iterations holds 10,000 of these, not a million rows): how many, the first one's seed,
    the last one's metrics, and the best (value, iteration) by the search metric (the earliest of equals; NaN
    and inf are never the best)."""

    __slots__ = ("metric", "better", "metrics", "constraints", "count", "iteration", "seed", "last", "best")

    def __init__(
        self, metric: str, mode: str, metrics: tuple[str, ...], constraints: tuple[Constraint, ...] = ()
    ):
        self.metric, self.metrics, self.constraints = metric, metrics, constraints
        self.better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
        self.count, self.iteration, self.seed = 0, 0, None
        self.last: dict[str, Any] = {}
        self.best: tuple[float, int] | None = None

    def add(self, row: Mapping[str, Any]) -> None:
        if self.count == 0:
            self.seed = row.get("trial_seed")
        self.count += 1
        self.iteration = row["iteration"]
        self.last = {m: row.get(m) for m in self.metrics}
        value = row.get(self.metric)
        if not scoreable(value) or not feasible(row, self.constraints):
            return
        if self.best is None or self.better(value, self.best[0]):
            self.best = (value, row["iteration"])
