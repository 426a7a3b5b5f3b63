"""The one writer of a run's tables.

Rows are buffered and flushed as Parquet part files while the job runs (every `flush_every_s`, and before
each rewrite of trials.parquet). Object stores punish many small files, so small parts are compacted as they
accumulate and the whole table is compacted into a few files when the job finishes. Memory stays flat however
long the run: only the parts not yet compacted are held; a compacted file's bytes wait in a local cache for
the final compaction (which then needs no read from the store, so it works through an outage too). `results/_manifest.json` names the files
that make up the table right now; it is rewritten after every change, and superseded files are deleted only
after the manifest stops naming them, so a reader following the manifest always sees a consistent table
(plain `*.parquet` globs are consistent once the job has finished).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import ResultsNotFound
from orchestrator.results.layout import MANIFEST, RESULTS_DIR, TRIALS_FILE
from orchestrator.results.reader import decode, decode_stored, read_result_files
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
        self._files: dict[str, int] = {}  # the files the manifest names -> their row counts
        self._parts: dict[str, pa.Table] = {}  # part files not compacted yet, with their rows
        self._cache: Path | None = None  # compacted files' bytes, for finish(); made on first use
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
        rows: list[dict] = []
        with self._lock, self._cache_removed_on_error():
            for name, data in files.items():
                table = decode_stored(self.store, name, data).cast(self.schema.rows_schema())
                self._files[name] = table.num_rows
                self._cached_path(name).write_bytes(data)
                rows += table.to_pylist()
            # A file the manifest does not name is what the killed driver wrote and never named, or superseded
            # and never deleted: its rows are elsewhere, or were never part of the table. Deleting it keeps a
            # `results/*.parquet` glob from reading rows twice; its number stays taken.
            ours = re.compile(rf"{RESULTS_DIR}/(?:part|compact|data)-(\d+)\.parquet")
            orphans = [f for f in self.store.list(RESULTS_DIR) if ours.fullmatch(f) and f not in self._files]
            numbers = [int(m[1]) for m in map(ours.fullmatch, [*self._files, *orphans]) if m]
            self._seq = max(numbers, default=-1) + 1
            self.rows_written = sum(self._files.values())
            for name in orphans:
                self.store.delete(name)
        return rows

    @contextlib.contextmanager
    def _cache_removed_on_error(self):
        """The local cache of compacted bytes goes if what fills it fails (a damaged file met by a resume): a
        command that ends in an error leaves no `hpo-results-*` folder in the temp dir."""
        try:
            yield
        except BaseException:
            if self._cache is not None:
                shutil.rmtree(self._cache, ignore_errors=True)
                self._cache = None
            raise

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
            name = f"{RESULTS_DIR}/part-{self._next()}.parquet"
            try:
                self.store.write_bytes(name, parquet_bytes(table))
            except BaseException:  # kept for the next flush (a full disk with room again at the run's end)
                self._rows = rows + self._rows
                raise
            self._parts[name], self._files[name] = table, table.num_rows
            self.rows_written += len(rows)
            if len(self._parts) >= self.compact_at:
                parts = list(self._parts)
                merged = pa.concat_tables([self._parts.pop(name) for name in parts]).combine_chunks()
                self._swap(parts, [self._cached("compact", parquet_bytes(merged), merged.num_rows)])
            else:
                self._write_manifest(complete=False)

    def finish(self) -> None:
        """Flush, then compact the whole table into as few files as it needs (one per MAX_ROWS_PER_FILE rows,
        written one input file at a time); mark the manifest complete. The local cache of compacted bytes is
        removed however this ends (a short run's table of one file, or a store that fails)."""
        try:
            self.flush()
            with self._lock:
                if len(self._files) <= 1:
                    self._write_manifest(complete=True)
                    return
                self._compact_all()
        finally:
            if self._cache is not None:
                shutil.rmtree(self._cache, ignore_errors=True)
                self._cache = None

    def _compact_all(self) -> None:
        names, written = list(self._files), []
        sink, out, rows = None, None, 0
        for name in names:
            table = self._parts.pop(name, None)
            if table is None:
                table = decode(self._cached_path(name).read_bytes())
            table, at = table.cast(self.schema.rows_schema()), 0
            while at < table.num_rows:
                piece = table.slice(at, MAX_ROWS_PER_FILE - rows)
                at += piece.num_rows
                if out is None:
                    sink = io.BytesIO()
                    out = pq.ParquetWriter(sink, self.schema.rows_schema(), compression="zstd")
                out.write_table(piece)
                rows += piece.num_rows
                if rows >= MAX_ROWS_PER_FILE:
                    out.close()
                    written.append(self._cached("data", sink.getvalue(), rows, keep=False))
                    sink, out, rows = None, None, 0
        if out is not None:
            out.close()
            written.append(self._cached("data", sink.getvalue(), rows, keep=False))
        self._swap(names, written, complete=True)

    def _cached_path(self, name: str) -> Path:
        """Where the bytes of result file `name` are kept until finish(); the directory is made on first use, so
        a run that never compacts leaves nothing in the temporary directory."""
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="hpo-results-"))
        return self._cache / Path(name).name

    def _next(self) -> str:
        seq, self._seq = self._seq, self._seq + 1
        return f"{seq:06d}"

    def _cached(self, kind: str, data: bytes, rows: int, *, keep: bool = True) -> str:
        """Write a compacted file (and keep its bytes for finish()); returns its name."""
        name = f"{RESULTS_DIR}/{kind}-{self._next()}.parquet"
        self.store.write_bytes(name, data)
        if keep:
            self._cached_path(name).write_bytes(data)
        self._files[name] = rows
        return name

    def _swap(self, old: list[str], new: list[str], complete: bool = False) -> None:
        """The manifest names `new` instead of `old` (readers switch over), then `old` is deleted."""
        for name in old:
            self._files.pop(name, None)
        self._write_manifest(complete=complete)
        for name in old:
            self.store.delete(name)
            if self._cache is not None:
                (self._cache / Path(name).name).unlink(missing_ok=True)

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            "version": 1,
            "files": sorted(self._files),
            "rows": sum(self._files.values()),
            "complete": complete,
        }
        self.store.write_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())

    def write_trials(self, table: pa.Table) -> None:
        """trials.parquet: one row per trial, sorted by trial_id, of the trials schema."""
        self.store.write_bytes(TRIALS_FILE, parquet_bytes(table))
