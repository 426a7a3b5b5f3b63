"""The one reader of a run's tables: pyarrow Tables (pandas on request) from a results URI, local or S3."""

from __future__ import annotations

import io
import json
from collections.abc import Container

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.errors import ResultsDamaged, ResultsNotFound
from orchestrator.results.layout import MANIFEST, RESULTS_DIR, RUN_FILE, TRIALS_FILE
from orchestrator.results.schema import CONFIG_PREFIX
from orchestrator.search.objectives import Constraint, Objective
from orchestrator.storage import Store, open_store

# What a run's results files and trials.parquet always hold (the schema's columns and its metadata).
RESULTS_COLUMNS = ("trial_id", "iteration")
TRIALS_COLUMNS = ("trial_id", "status")
_METADATA_KEY = b"hpo.metric"


def damaged(store: Store, rel: str, problem: str) -> ResultsDamaged:
    """The one line for a file of the run at `store` that is there but cannot be used: its URI, what is wrong,
    and what can be done."""
    return ResultsDamaged(
        f"{store.path(rel)} {problem}; the run is damaged: restore that file from a copy (a backup, or an "
        "earlier `hpo results pull` of this run) or run the job again"
    )


def read_json(store: Store, rel: str) -> dict:
    """A JSON object the run stored (run.json, the manifest); FileNotFoundError if absent, ResultsDamaged if it is
    not a JSON object (empty, cut short, garbage)."""
    return parse_json(store, rel, store.read_bytes(rel))


def parse_json(store: Store, rel: str, data: bytes) -> dict:
    """read_json of bytes already read from `rel`."""
    try:
        value = json.loads(data)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise damaged(store, rel, "is not valid JSON (empty or cut short?)") from None
    if not isinstance(value, dict):
        raise damaged(store, rel, f"holds a JSON {type(value).__name__}, not an object")
    return value


def run_info(store: Store) -> dict:
    """run.json of the run at `store` ({} while there is none); ResultsDamaged if it cannot be read."""
    try:
        return read_json(store, RUN_FILE)
    except FileNotFoundError:
        return {}


def _is_results_file(name: object) -> bool:
    """A name the writer gives a results file: `results/<name>.parquet`, nothing above or below."""
    if not isinstance(name, str) or not name.endswith(".parquet"):
        return False
    folder, _, file = name.rpartition("/")
    return folder == RESULTS_DIR and file not in ("", ".parquet") and not file.startswith(".")


def result_files(store: Store) -> list[str]:
    """The files that make up the results table now: the manifest's list (no listing of the store needed).

    Without a manifest: the part files, if that is all there is (a run writes its first part, then its first
    manifest: between the two, or killed there, its rows are that part); ResultsDamaged if the listing holds a
    compacted file or the run ended (a manifest was written then, and a listing may hold superseded files)."""
    try:
        manifest = read_json(store, MANIFEST)
    except FileNotFoundError:
        files = [f for f in store.list(RESULTS_DIR) if _is_results_file(f)]
        compacted = [f for f in files if not f.rpartition("/")[2].startswith("part-")]
        if compacted or (files and run_info(store).get("status", "running") != "running"):
            raise damaged(
                store,
                MANIFEST,
                f"is missing, while {store.path(RESULTS_DIR)} holds {len(files)} results file(s)",
            ) from None
        return files
    files = manifest.get("files")
    if not isinstance(files, list):
        raise damaged(store, MANIFEST, 'has no "files" list')
    for name in files:
        if not _is_results_file(name):
            shown = repr(name)
            raise damaged(
                store,
                MANIFEST,
                f"names {shown if len(shown) <= 80 else shown[:77] + '...'}, not a results file",
            )
    return files


def result_uris(uri: str | Store, *, options=None) -> list[str]:
    """The URIs of the files that make up the run's results table now (its manifest's list): what to hand to
    polars, duckdb or pyarrow instead of a `results/*.parquet` glob, which can also match a file a killed driver
    wrote and never named."""
    store = uri if isinstance(uri, Store) else open_store(uri, options)
    return [store.path(f) for f in result_files(store)]


def decode(data: bytes) -> pa.Table:
    # Single-threaded decode: with pyarrow's thread pool used in a process that also used boto3, about half of
    # such processes abort at interpreter exit ("terminate called without an active exception"; measured).
    return pq.read_table(io.BytesIO(data), use_threads=False)


def decode_stored(
    store: Store, rel: str, data: bytes, columns: tuple[str, ...] = RESULTS_COLUMNS
) -> pa.Table:
    """decode() of a file of the run at `store`, or ResultsDamaged naming it if it is not a readable Parquet
    file holding `columns` and the run's metadata (cut short, garbage, some other table)."""
    try:
        table = decode(data)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason.removeprefix("Could not open Parquet input source '<Buffer>': ").split(". ")[0]
        raise damaged(store, rel, f"is not a readable Parquet file ({reason.rstrip('.')[:150]})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing or _METADATA_KEY not in (table.schema.metadata or {}):
        what = f"no {missing[0]} column" if missing else "no hpo metadata"
        raise damaged(store, rel, f"is a Parquet file but not one this run wrote ({what})")
    return table


def _named_but_missing(store: Store, rel: str) -> ResultsDamaged:
    return damaged(store, rel, f"is named by {store.path(MANIFEST)} but missing")


def check_result_files_present(store: Store) -> None:
    """ResultsDamaged naming the first file the manifest names that the store does not hold (one listing, no
    file read): what `hpo resume` checks before it starts anything."""
    present = set(store.list(RESULTS_DIR))
    for name in result_files(store):
        if name not in present:
            raise _named_but_missing(store, name)


def read_result_files(store: Store) -> dict[str, bytes]:
    """{file: bytes} of the results table as one consistent snapshot, even while the run compacts."""
    return read_new_result_files(store, ())[1]


def read_new_result_files(store: Store, have: Container[str]) -> tuple[list[str], dict[str, bytes]]:
    """The files that make up the results table now, and the bytes of those not in `have` (a reader that keeps
    what it decoded reads only what is new: results files never change once written). One consistent snapshot,
    even while the run compacts."""
    missing = ""
    for _ in range(5):  # a compaction may delete a file between reading the manifest and the file
        files = result_files(store)
        if not files:
            raise ResultsNotFound(
                f"no results under {store.path(RESULTS_DIR)} (is {store.uri} a run's results_uri?)"
            )
        read: dict[str, bytes] = {}
        try:
            for missing in files:
                if missing not in have:
                    read[missing] = store.read_bytes(missing)
        except FileNotFoundError:
            continue
        return files, read
    # the manifest still names a file that is not there: not a compaction under way, a file lost
    raise _named_but_missing(store, missing)


def load_results(uri: str | Store, *, as_pandas: bool = False, options=None):
    """Every (trial, iteration) row of the run at `uri`, sorted by trial and iteration."""
    store = uri if isinstance(uri, Store) else open_store(uri, options)
    tables = [decode_stored(store, rel, data) for rel, data in read_result_files(store).items()]
    try:
        table = pa.concat_tables(tables)
    except (pa.ArrowException, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise damaged(
            store, MANIFEST, f"names results files that do not form one table ({reason[:150]})"
        ) from None
    table = table.sort_by([("trial_id", "ascending"), ("iteration", "ascending")])
    table = table.replace_schema_metadata(tables[0].schema.metadata)
    return table.to_pandas() if as_pandas else table


def load_trials(uri: str | Store, *, as_pandas: bool = False, options=None):
    """One row per trial of the run at `uri`."""
    store = uri if isinstance(uri, Store) else open_store(uri, options)
    try:
        data = store.read_bytes(TRIALS_FILE)
    except FileNotFoundError:
        raise ResultsNotFound(
            f"no {TRIALS_FILE} under {store.path()} (is {store.uri} a run's results_uri?)"
        ) from None
    table = decode_stored(store, TRIALS_FILE, data, TRIALS_COLUMNS)
    return table.to_pandas() if as_pandas else table


def search_metric(table: pa.Table) -> tuple[str, str]:
    meta = table.schema.metadata or {}
    return meta[b"hpo.metric"].decode(), meta[b"hpo.mode"].decode()


def objectives_of(table: pa.Table) -> tuple[Objective, ...]:
    """A run's objectives, from its table's metadata: several, or the one search metric."""
    meta = table.schema.metadata or {}
    if b"hpo.objectives" in meta:
        return tuple(Objective(m, d) for m, d in json.loads(meta[b"hpo.objectives"]))
    return (Objective(*search_metric(table)),)


def constraints_of(table: pa.Table) -> tuple[Constraint, ...]:
    meta = table.schema.metadata or {}
    return tuple(Constraint.parse(text) for text in json.loads(meta.get(b"hpo.constraints", b"[]")))


def _scored(table: pa.Table, metric: str) -> pa.Table:
    """The rows that can be the best by `metric`: a finite value (NaN and inf are never the best; null is no
    value), and every constraint of the run satisfied."""
    keep = pc.is_finite(table[metric])
    for bound in constraints_of(table):
        compare = pc.less_equal if bound.op == "<=" else pc.greater_equal
        keep = pc.and_kleene(
            keep, pc.and_kleene(pc.is_finite(table[bound.metric]), compare(table[bound.metric], bound.bound))
        )
    return table.filter(pc.fill_null(keep, False))


def best_row(table: pa.Table) -> dict:
    """The (trial, iteration) row with the best search-metric value; ties go to the earliest trial/iteration."""
    metric, mode = search_metric(table)
    scored = _scored(table, metric)
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
    scored = _scored(table, metric).select(["trial_id", "iteration", metric])
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


def pareto_front(trials: pa.Table) -> list[dict] | None:
    """The trials on a run of several objectives' Pareto front (trials.parquet's `on_front`), best first by the
    primary objective: trial_id, its objectives' values at its last report, and its config. None for a run of
    one objective."""
    objectives = objectives_of(trials)
    if len(objectives) < 2 or "on_front" not in trials.column_names:
        return None
    front = [row for row in trials.to_pylist() if row["on_front"]]
    primary = objectives[0]
    front.sort(key=lambda r: (primary.as_minimized(r[f"last_{primary.metric}"]), r["trial_id"]))
    return [
        {
            "trial_id": row["trial_id"],
            "values": {o.metric: row[f"last_{o.metric}"] for o in objectives},
            "config": config_of(row),
        }
        for row in front
    ]


def config_of(row: dict) -> dict:
    """A stored row's config: its config columns by name, without the nulls of a conditional space's inactive
    hyperparameters (a config value is never null otherwise)."""
    return {
        k.removeprefix(CONFIG_PREFIX): v
        for k, v in row.items()
        if k.startswith(CONFIG_PREFIX) and v is not None
    }
