"""The one writer of a run's tables. Rows are buffered and flushed as Parquet part files while the job runs."""

from __future__ import annotations

import io
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.results.schema import ResultsSchema
from orchestrator.storage import Store

RESULTS_DIR = "results"
TRIALS_FILE = "trials.parquet"


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


class ResultsWriter:
    """Appends result rows and rewrites trials.parquet. Thread-safe; flushes at most every `flush_every_s`."""

    def __init__(self, store: Store, schema: ResultsSchema, *, flush_every_s: float = 10.0):
        self.store, self.schema, self.flush_every_s = store, schema, flush_every_s
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._next_part = len(store.list(RESULTS_DIR))
        self.rows_written = 0

    def __getstate__(self):  # Tune pickles callbacks into its experiment state; locks do not pickle
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, row: dict) -> None:
        with self._lock:
            self._rows.append(row)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one new part file (atomically: readers never see half a file)."""
        with self._lock:
            rows, self._rows = self._rows, []
            self._last_flush = time.monotonic()
            if not rows:
                return
            part = self._next_part
            self._next_part += 1
        table = pa.Table.from_pylist(rows, schema=self.schema.rows_schema())
        self.store.write_bytes(f"{RESULTS_DIR}/part-{part:06d}.parquet", _parquet_bytes(table))
        self.rows_written += len(rows)

    def write_trials(self, records: list[dict]) -> None:
        table = pa.Table.from_pylist(sorted(records, key=lambda r: r["trial_id"]),
                                     schema=self.schema.trials_schema())
        self.store.write_bytes(TRIALS_FILE, _parquet_bytes(table))
