"""Recording a run's rows and trial records: every result becomes one row, every trial event updates the trial's
record. The writer owns the files; this owns what goes in them.

Nothing here grows with the number of reports: a trial's rows go to the writer as they come, and the recorder
keeps, per trial, only what its record needs (results/schema.py's TrialRows). trials.parquet is rewritten
after a trial event, at most every `min_interval_s` (or `cost_factor` times the last rewrite's duration, if
longer), else at the next step of Tune's loop; always at the end. The table is kept as Arrow and only changed
records are converted: rewriting the table of a 10,000-trial run costs ~35 ms, not the 0.25 s of building it
anew each time, so thousands of short trials do not make the driver quadratic. Before a rewrite that stores a
trial's end, the results rows are flushed, so a stored finished record never counts rows the store lacks; and a
trial's end is announced (its progress line) once its record is stored, so a trial the user saw finish is one
`hpo resume` finds finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.results.layout import ITERATION_KEY
from orchestrator.results.schema import GPU_MEM_PEAK, GPU_UTIL, TrialRows


class TrialRecorder:
    def __init__(
        self,
        writer: ResultsWriter,
        schema: ResultsSchema,
        *,
        fixed: Mapping,
        max_epochs: int,
        min_interval_s: float = 0.25,
        cost_factor: float = 10.0,
        ledger=None,
    ):
        self.writer, self.schema, self.fixed, self.max_epochs = writer, schema, dict(fixed), max_epochs
        self.min_interval_s, self.cost_factor = min_interval_s, cost_factor
        self.rows: dict[str, TrialRows] = {}  # trial -> what its record needs of its rows
        self.records: dict[str, dict] = {}
        self.checkpoints: dict[str, tuple] = {}  # trial -> (latest, best) checkpoint URIs
        self.nodes: dict[str, str] = {}  # trial -> Ray node id that reported its results
        self.retries: dict[str, int] = {}  # trial -> retries so far
        self.preemptions: dict[str, int] = {}  # trial -> lost nodes so far (retried, not counted as retries)
        self.lineage: dict[str, tuple[str, int]] = {}  # PBT: trial -> (donor, epoch) of its last exploit
        # PBT: trial -> (epoch, config, lineage) in force up to that epoch: a step can change a trial's config
        # before the tracker sees the report that reached the step (Tune tells its scheduler first)
        self.until: dict[str, tuple[int, Mapping, tuple[str, int] | None]] = {}
        self.ledger = ledger  # budget/ledger.py's: what each trial held; None: no ledger columns
        self._written, self._cost = float("-inf"), 0.0
        self._changed: set[str] = set()  # records changed since trials.parquet was last written
        self._ended = False  # one of them is a trial's end: flush the rows first
        self._table: pa.Table | None = None  # trials.parquet as last written, less nothing
        self._done = 0  # records whose status is not "running"
        self._announce: list[Callable[[], None]] = []  # to call once the records are stored

    def _rows(self, name: str) -> TrialRows:
        if name not in self.rows:
            self.rows[name] = self.schema.trial_rows()
        return self.rows[name]

    def preload(self, rows: list[dict], records: list[dict]) -> None:
        """`hpo resume`: what the killed run already stored, so it is kept and never written twice."""
        for row in sorted(rows, key=lambda r: (r["trial_id"], r["iteration"])):
            kept = self._rows(row["trial_id"])
            if kept.iteration < row["iteration"]:
                kept.add(row)
        for record in records:
            self._set(record["trial_id"], record)
            self.retries[record["trial_id"]] = record.get("retries") or 0
            self.preemptions[record["trial_id"]] = record.get("preemptions") or 0
            if record.get("node_id"):
                self.nodes[record["trial_id"]] = record["node_id"]
            if record.get("checkpoint"):
                self.checkpoints[record["trial_id"]] = (record["checkpoint"], record.get("best_checkpoint"))

    def iterations(self, name: str) -> int:
        """How many rows trial `name` has (stored before a resume, or reported since)."""
        return self.rows[name].count if name in self.rows else 0

    def exploited(self, name: str, donor: str, epoch: int, config_before: Mapping | None) -> None:
        """PBT: `name` continues from `donor`'s checkpoint of `epoch`; its reports up to that epoch keep the
        config and parent they were trained with (None: a resumed run's trial whose rows are stored already)."""
        if config_before is not None:
            self.until[name] = (epoch, dict(config_before), self.lineage.get(name))
        self.lineage[name] = (donor, epoch)

    def add(self, name: str, config: Mapping, result: Mapping) -> dict | None:
        """The row of a reported result, or None for a repeat (a restored trial re-reports its epochs)."""
        if result.get("node_id"):
            self.nodes[name] = result["node_id"]
            if self.ledger is not None:
                self.ledger.ran_on(name, result["node_id"])
        if GPU_MEM_PEAK in result and self.ledger is not None:  # a trial on a GPU (train/gpu_meter.py)
            self.ledger.gpu_measured(name, result.get(GPU_UTIL), result.get(GPU_MEM_PEAK))
        # Links even from a repeat: a trial killed after its last checkpoint but before its record was
        # rewritten re-reports that epoch on resume, and the link is known only from that report.
        if result.get("checkpoint"):
            self.checkpoints[name] = (result["checkpoint"], result.get("best_checkpoint"))
        kept = self._rows(name)
        if kept.iteration >= int(result[ITERATION_KEY]):
            return None
        parent = self.lineage.get(name)
        if name in self.until:
            epoch, before, parent_before = self.until[name]
            if int(result[ITERATION_KEY]) <= epoch:
                config, parent = before, parent_before
            else:
                del self.until[name]
        row = self.schema.row(name, result, {**self.fixed, **config}, parent)
        kept.add(row)
        self.writer.add(row)
        return row

    def record(
        self,
        name: str,
        config: Mapping,
        status: str,
        error: str | None = None,
        announce: Callable[[dict, int], None] | None = None,
    ) -> dict:
        """Set trial `name`'s record to `status`; trials.parquet follows (see sync), and then `announce(record,
        trials done)`, with the count of ended trials as it was at this event."""
        record = self.schema.trial_record(
            name,
            status,
            self._rows(name),
            {**self.fixed, **config},
            self.max_epochs,
            self.checkpoints.get(name, (None, None)),
            error,
            self.nodes.get(name),
            self.retries.get(name, 0),
            self.preemptions.get(name, 0),
            self.ledger.entry(name) if self.ledger is not None else None,
        )
        self._set(name, record)
        self._ended = self._ended or status != "running"
        if announce is not None:
            done = self._done
            self._announce.append(lambda: announce(record, done))
        self.sync()
        return record

    def set_status(self, name: str, status: str) -> None:
        """Change only the status of a record this run did not write (a resumed run's, never started again)."""
        self._set(name, {**self.records[name], "status": status})
        self._ended = True

    def _set(self, name: str, record: dict) -> None:
        old = self.records.get(name)
        self._done += (record["status"] != "running") - (old is not None and old["status"] != "running")
        self.records[name] = record
        self._changed.add(name)

    def sync(self, *, force: bool = False) -> None:
        """Rewrite trials.parquet if a record changed, unless the last rewrite was too recent (see the module
        docstring; `force`: now). The rows first when a trial ended; then what waited for the records to be
        stored is announced."""
        if not self._changed:
            return
        wait = max(self.min_interval_s, self.cost_factor * self._cost)
        if not force and time.monotonic() - self._written < wait:
            return
        began = time.monotonic()
        if self._ended:
            self.writer.flush()
        fresh = pa.Table.from_pylist(
            [self.records[name] for name in self._changed], schema=self.schema.trials_schema()
        )
        if self._table is not None:
            kept = self._table.filter(
                pc.invert(pc.is_in(self._table["trial_id"], value_set=fresh["trial_id"]))
            )
            fresh = pa.concat_tables([kept, fresh])
        self._table = self.schema.with_front(fresh.sort_by("trial_id"))  # ranks move as trials finish
        self.writer.write_trials(self._table)
        self._written = time.monotonic()
        self._changed, self._ended, self._cost = set(), False, self._written - began
        announce, self._announce = self._announce, []
        for call in announce:
            call()

    def retried(self, name: str, *, preempted: bool = False) -> int:
        """Count a failure Tune retries (a lost node apart); returns the trial's attempts so far."""
        counts = self.preemptions if preempted else self.retries
        counts[name] = counts.get(name, 0) + 1
        return self.retries.get(name, 0) + self.preemptions.get(name, 0)

    def done(self) -> int:
        return self._done
