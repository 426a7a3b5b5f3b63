"""Recording a run's rows and trial records: every result becomes one row, every trial event rewrites the trial's
record in trials.parquet. The writer owns the files; this owns what goes in them."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.results.layout import ITERATION_KEY


class TrialRecorder:
    def __init__(self, writer: ResultsWriter, schema: ResultsSchema, *, fixed: Mapping, max_epochs: int):
        self.writer, self.schema, self.fixed, self.max_epochs = writer, schema, dict(fixed), max_epochs
        self.rows: dict[str, list[dict]] = {}
        self.records: dict[str, dict] = {}
        self.checkpoints: dict[str, tuple] = {}  # trial -> (latest, best) checkpoint URIs
        self.nodes: dict[str, str] = {}  # trial -> Ray node id that reported its results
        self.retries: dict[str, int] = {}  # trial -> retries so far

    def preload(self, rows: list[dict], records: list[dict]) -> None:
        """`hpo resume`: what the killed run already stored, so it is kept and never written twice."""
        for row in sorted(rows, key=lambda r: (r["trial_id"], r["iteration"])):
            kept = self.rows.setdefault(row["trial_id"], [])
            if not kept or kept[-1]["iteration"] < row["iteration"]:
                kept.append(row)
        for record in records:
            self.records[record["trial_id"]] = record
            self.retries[record["trial_id"]] = record.get("retries") or 0
            if record.get("node_id"):
                self.nodes[record["trial_id"]] = record["node_id"]
            if record.get("checkpoint"):
                self.checkpoints[record["trial_id"]] = (record["checkpoint"], record.get("best_checkpoint"))

    def add(self, name: str, config: Mapping, result: Mapping) -> dict | None:
        """The row of a reported result, or None for a repeat (a restored trial re-reports its epochs)."""
        if result.get("node_id"):
            self.nodes[name] = result["node_id"]
        # Links even from a repeat: a trial killed after its last checkpoint but before its record was
        # rewritten re-reports that epoch on resume, and the link is known only from that report.
        if result.get("checkpoint"):
            self.checkpoints[name] = (result["checkpoint"], result.get("best_checkpoint"))
        rows = self.rows.setdefault(name, [])
        if rows and rows[-1]["iteration"] >= int(result[ITERATION_KEY]):
            return None
        row = self.schema.row(name, result, {**self.fixed, **config})
        rows.append(row)
        self.writer.add(row)
        return row

    def record(self, name: str, config: Mapping, status: str, error: str | None = None) -> dict:
        """Rewrite trial `name`'s record (and trials.parquet) with `status`."""
        record = self.schema.trial_record(
            name,
            status,
            self.rows.get(name, []),
            {**self.fixed, **config},
            self.max_epochs,
            self.checkpoints.get(name, (None, None)),
            error,
            self.nodes.get(name),
            self.retries.get(name, 0),
        )
        self.records[name] = record
        self.writer.write_trials(list(self.records.values()))
        return record

    def retried(self, name: str) -> int:
        self.retries[name] = self.retries.get(name, 0) + 1
        return self.retries[name]

    def done(self) -> int:
        return sum(r["status"] != "running" for r in self.records.values())

    def all_rows(self) -> list[dict]:
        return [row for name in sorted(self.rows) for row in self.rows[name]]
