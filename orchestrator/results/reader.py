"""The one reader of a run's tables: pyarrow Tables (pandas on request) from a results URI."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.results.schema import CONFIG_PREFIX
from orchestrator.results.writer import RESULTS_DIR, TRIALS_FILE
from orchestrator.storage import open_store


class ResultsNotFound(FileNotFoundError):
    pass


def load_results(uri: str, *, as_pandas: bool = False):
    """Every (trial, iteration) row of the run at `uri`, sorted by trial and iteration."""
    store = open_store(uri)
    files = [f for f in store.list(RESULTS_DIR) if f.endswith(".parquet") and not f.split("/")[-1].startswith(".")]
    if not files:
        raise ResultsNotFound(f"no results under {store.path(RESULTS_DIR)} (is {uri} a run's results_uri?)")
    fs, root = store.arrow_filesystem()
    dataset = ds.dataset([f"{root}/{f}" for f in files], format="parquet", filesystem=fs)
    table = dataset.to_table().sort_by([("trial_id", "ascending"), ("iteration", "ascending")])
    table = table.replace_schema_metadata(dataset.schema.metadata)
    return table.to_pandas() if as_pandas else table


def load_trials(uri: str, *, as_pandas: bool = False):
    """One row per trial of the run at `uri`."""
    store = open_store(uri)
    if not store.exists(TRIALS_FILE):
        raise ResultsNotFound(f"no {TRIALS_FILE} under {store.path()} (is {uri} a run's results_uri?)")
    fs, root = store.arrow_filesystem()
    table = pq.read_table(f"{root}/{TRIALS_FILE}", filesystem=fs)
    return table.to_pandas() if as_pandas else table


def search_metric(table: pa.Table) -> tuple[str, str]:
    meta = table.schema.metadata or {}
    return meta[b"hpo.metric"].decode(), meta[b"hpo.mode"].decode()


def best_row(table: pa.Table) -> dict:
    """The (trial, iteration) row with the best search-metric value; ties go to the earliest trial/iteration."""
    metric, mode = search_metric(table)
    scored = table.filter(pc.is_valid(table[metric]))
    if scored.num_rows == 0:
        raise ResultsNotFound(f"no row reports {metric}")
    order = "ascending" if mode == "min" else "descending"
    top = scored.sort_by([(metric, order), ("trial_id", "ascending"), ("iteration", "ascending")]).slice(0, 1)
    return top.to_pylist()[0]


def config_of(row: dict) -> dict:
    return {k.removeprefix(CONFIG_PREFIX): v for k, v in row.items() if k.startswith(CONFIG_PREFIX)}
