"""The one reader of a run's tables: pyarrow Tables (pandas on request) from a results URI, local or S3."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.errors import ResultsNotFound
from orchestrator.results.layout import MANIFEST, RESULTS_DIR, TRIALS_FILE
from orchestrator.results.schema import CONFIG_PREFIX
from orchestrator.storage import Store, open_store


def result_files(store: Store) -> list[str]:
    """The files that make up the results table now: the manifest's list (no listing of the store needed)."""
    try:
        return json.loads(store.read_bytes(MANIFEST))["files"]
    except FileNotFoundError:
        return [f for f in store.list(RESULTS_DIR) if f.endswith(".parquet")]


def decode(data: bytes) -> pa.Table:
    # Single-threaded decode: with pyarrow's thread pool used in a process that also used boto3, about half of
    # such processes abort at interpreter exit ("terminate called without an active exception"; measured).
    return pq.read_table(io.BytesIO(data), use_threads=False)


def _read_table(store: Store, rel: str) -> pa.Table:
    return decode(store.read_bytes(rel))


def read_result_files(store: Store) -> dict[str, bytes]:
    """{file: bytes} of the results table as one consistent snapshot, even while the run compacts."""
    for _ in range(5):  # a compaction may delete a file between reading the manifest and the file
        files = result_files(store)
        if not files:
            raise ResultsNotFound(
                f"no results under {store.path(RESULTS_DIR)} (is {store.uri} a run's results_uri?)"
            )
        try:
            return {f: store.read_bytes(f) for f in files}
        except FileNotFoundError:
            continue
    raise ResultsNotFound(f"results under {store.path(RESULTS_DIR)} kept changing while being read")


def load_results(uri: str | Store, *, as_pandas: bool = False, options=None):
    """Every (trial, iteration) row of the run at `uri`, sorted by trial and iteration."""
    store = uri if isinstance(uri, Store) else open_store(uri, options)
    tables = [decode(data) for data in read_result_files(store).values()]
    table = pa.concat_tables(tables).sort_by([("trial_id", "ascending"), ("iteration", "ascending")])
    table = table.replace_schema_metadata(tables[0].schema.metadata)
    return table.to_pandas() if as_pandas else table


def load_trials(uri: str | Store, *, as_pandas: bool = False, options=None):
    """One row per trial of the run at `uri`."""
    store = uri if isinstance(uri, Store) else open_store(uri, options)
    try:
        table = _read_table(store, TRIALS_FILE)
    except FileNotFoundError:
        raise ResultsNotFound(
            f"no {TRIALS_FILE} under {store.path()} (is {store.uri} a run's results_uri?)"
        ) from None
    return table.to_pandas() if as_pandas else table


def search_metric(table: pa.Table) -> tuple[str, str]:
    meta = table.schema.metadata or {}
    return meta[b"hpo.metric"].decode(), meta[b"hpo.mode"].decode()


def best_row(table: pa.Table) -> dict:
    """The (trial, iteration) row with the best search-metric value; ties go to the earliest trial/iteration."""
    metric, mode = search_metric(table)
    scored = table.filter(pc.is_finite(table[metric]))  # NaN and inf are never the best; null is no value
    if scored.num_rows == 0:
        raise ResultsNotFound(f"no row reports {metric}")
    order = "ascending" if mode == "min" else "descending"
    top = scored.sort_by([(metric, order), ("trial_id", "ascending"), ("iteration", "ascending")]).slice(0, 1)
    return top.to_pylist()[0]


def best_per_trial(table: pa.Table) -> dict[str, tuple[int, float | None, int | None]]:
    """trial -> (rows, best search-metric value, its iteration) from the results rows: what each trial's record
    says once it ended, and the truth while it runs (a running trial's record is rewritten at its events, not at
    each report). The earliest iteration of equal values; NaN and inf are never the best."""
    metric, mode = search_metric(table)
    counts = pc.value_counts(table["trial_id"]).to_pylist()
    found: dict[str, tuple[int, float | None, int | None]] = {
        c["values"]: (c["counts"], None, None) for c in counts
    }
    scored = table.select(["trial_id", "iteration", metric]).filter(pc.is_finite(table[metric]))
    order = "ascending" if mode == "min" else "descending"
    scored = scored.sort_by([("trial_id", "ascending"), (metric, order), ("iteration", "ascending")])
    seen: set[str] = set()
    columns = scored.to_pydict()
    for trial, iteration, value in zip(
        columns["trial_id"], columns["iteration"], columns[metric], strict=True
    ):
        if trial not in seen:
            seen.add(trial)
            found[trial] = (found[trial][0], value, iteration)
    return found


def config_of(row: dict) -> dict:
    return {k.removeprefix(CONFIG_PREFIX): v for k, v in row.items() if k.startswith(CONFIG_PREFIX)}
