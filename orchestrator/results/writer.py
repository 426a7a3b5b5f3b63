"""The one writer of a run's tables.

Rows are buffered and flushed as Parquet part files while the job runs (every `flush_every_s` and at every
trial end). Object stores punish many small files, so small parts are compacted as they accumulate and the
whole table is compacted into a few files when the job finishes. `results/_manifest.json` names the files
that make up the table right now; it is rewritten after every change, and superseded files are deleted only
after the manifest stops naming them, so a reader following the manifest always sees a consistent table
(plain `*.parquet` globs are consistent once the job has finished).
"""

from __future__ import annotations

import io
import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import ResultsNotFound
from orchestrator.results.layout import MANIFEST, RESULTS_DIR, TRIALS_FILE
from orchestrator.results.reader import decode, read_result_files
from orchestrator.results.schema import ResultsSchema
from orchestrator.storage import Store

MAX_ROWS_PER_FILE = 2_000_000


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


class ResultsWriter:
    """Appends result rows and rewrites trials.parquet. Thread-safe."""

    def __init__(
        self, store: Store, schema: ResultsSchema, *, flush_every_s: float = 10.0, compact_at: int = 16
    ):
        self.store, self.schema = store, schema
        self.flush_every_s, self.compact_at = flush_every_s, compact_at
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._files: dict[
            str, pa.Table
        ] = {}  # the files the manifest names, with their rows (for compaction)
        self._seq = 0
        self.rows_written = 0

    def __getstate__(self):  # Tune pickles callbacks into its experiment state; locks do not pickle
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def adopt(self) -> list[dict]:
        """Continue the table a killed run left (`hpo resume`): its files stay in the manifest and new rows are
        appended after them. Returns the rows already there. A run with no results yet starts empty."""
        try:
            files = read_result_files(self.store)
        except ResultsNotFound:
            return []
        with self._lock:
            self._files = {name: decode(data).cast(self.schema.rows_schema()) for name, data in files.items()}
            numbers = [int(name.rsplit("-", 1)[1].split(".")[0]) for name in self._files]
            self._seq = max(numbers, default=-1) + 1
            self.rows_written = sum(t.num_rows for t in self._files.values())
            return [row for table in self._files.values() for row in table.to_pylist()]

    def add(self, row: dict) -> None:
        with self._lock:
            self._rows.append(row)
            due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one new part file and name it in the manifest."""
        with self._lock:
            rows, self._rows = self._rows, []
            self._last_flush = time.monotonic()
            if not rows:
                return
            table = pa.Table.from_pylist(rows, schema=self.schema.rows_schema())
            self._write_file("part", table)
            self.rows_written += len(rows)
            parts = [name for name in self._files if "/part-" in name]
            if len(parts) >= self.compact_at:
                self._replace(parts, "compact")
            else:
                self._write_manifest(complete=False)

    def finish(self) -> None:
        """Flush, then compact the whole table into as few files as it needs; mark the manifest complete."""
        self.flush()
        with self._lock:
            if len(self._files) > 1:
                self._replace(list(self._files), "data", complete=True)
            else:
                self._write_manifest(complete=True)

    def _write_file(self, kind: str, table: pa.Table) -> str:
        name = f"{RESULTS_DIR}/{kind}-{self._seq:06d}.parquet"
        self._seq += 1
        self.store.write_bytes(name, parquet_bytes(table))
        self._files[name] = table
        return name

    def _replace(self, names: list[str], kind: str, complete: bool = False) -> None:
        merged = pa.concat_tables([self._files.pop(name) for name in names]).combine_chunks()
        for start in range(0, max(1, merged.num_rows), MAX_ROWS_PER_FILE):
            self._write_file(kind, merged.slice(start, MAX_ROWS_PER_FILE))
        self._write_manifest(complete=complete)  # readers switch to the new files...
        for name in names:
            self.store.delete(name)  # ...before the old ones go

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            "version": 1,
            "files": sorted(self._files),
            "rows": sum(t.num_rows for t in self._files.values()),
            "complete": complete,
        }
        self.store.write_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())

    def write_trials(self, records: list[dict]) -> None:
        table = pa.Table.from_pylist(
            sorted(records, key=lambda r: r["trial_id"]), schema=self.schema.trials_schema()
        )
        self.store.write_bytes(TRIALS_FILE, parquet_bytes(table))
