"""What the user sees while a job runs: one line per event worth seeing, with a clock, and the job's best so far."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.results import ResultsSchema, format_config
from orchestrator.results.schema import scoreable


class BestRow:
    """The best (trial, iteration) row by the search metric, as rows arrive. Ties go to the earliest (trial,
    iteration), whatever order concurrent trials reported in: the row results.reader.best_row finds."""

    def __init__(self, schema: ResultsSchema):
        self.metric, self.mode, self.schema = schema.metric, schema.mode, schema
        self.row: dict | None = None

    def consider(self, row: dict) -> None:
        value = row.get(self.metric)
        if not scoreable(value) or not self.schema.feasible(row):  # a report that breaks a constraint: never
            return
        if self.row is None or self._better(value, self.row[self.metric]):
            self.row = row
        elif value == self.row[self.metric] and _key(row) < _key(self.row):
            self.row = row

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b


def _key(row: dict) -> tuple[str, int]:
    return row["trial_id"], row["iteration"]


class Progress:
    def __init__(
        self,
        emit: Callable[[str], None],
        schema: ResultsSchema,
        *,
        max_epochs: int,
        num_trials: int,
        max_retries: int,
    ):
        self.emit, self.schema = emit, schema
        self.max_epochs, self.num_trials, self.max_retries = max_epochs, num_trials, max_retries
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        s = int(time.monotonic() - self.started)
        self.emit(f"[{s // 60:02d}:{s % 60:02d}] {text}")

    def trial_started(self, name: str, config: dict) -> None:
        self.line(f"{name} started  {format_config(config)}")

    def epoch(self, name: str, row: dict) -> None:
        extra = "  ".join(f"{m}={row[m]:.4f}" for m in self.schema.metrics if row.get(m) is not None)
        self.line(f"{name} epoch {row['iteration']:>3}/{self.max_epochs}  {extra}")

    def trial_completed(self, name: str, record: dict, done: int, best: dict | None) -> None:
        how = "stopped by ASHA" if record["stopped_early"] else "completed"
        metric = self.schema.metric
        value = record[f"best_{metric}"]
        shown = f"best {metric}={value:.4f}" if value is not None else "no metric"
        job_best = f"; job best {best['trial_id']} {best[metric]:.4f}" if best else ""
        self.line(
            f"{name} {how} after {record['iterations']} epoch(s), {shown}  "
            f"[{done}/{self.num_trials} trials done{job_best}]"
        )

    def trial_interrupted(self, name: str, record: dict) -> None:
        self.line(
            f"{name} interrupted after {record['iterations']} epoch(s); `hpo resume` continues it from its "
            "last checkpoint"
        )

    def trial_retried(self, name: str, retry: int, why: str, *, from_checkpoint: bool) -> None:
        start = "from its last checkpoint" if from_checkpoint else "from the start (it has no checkpoint yet)"
        self.line(f"{name} failed, retry {retry} of {self.max_retries} {start}: {why}")

    def trial_preempted(self, name: str, times: int, why: str, *, from_checkpoint: bool) -> None:
        start = "from its last checkpoint" if from_checkpoint else "from the start (it has no checkpoint yet)"
        self.line(f"{name} lost its node (preemption {times}; not counted as a retry), rerun {start}: {why}")

    def trial_failed(self, name: str, why: str, done: int) -> None:
        self.line(f"{name} FAILED: {why}  [{done}/{self.num_trials} trials done]")
