"""Operations on stored runs: pull a run to local disk, list the runs under a storage root, sync a spool."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ResultsNotFound
from orchestrator.results.layout import MANIFEST, RUN_FILE, SPEC_FILE, TRIALS_FILE
from orchestrator.results.reader import best_row, load_results, load_trials, read_result_files
from orchestrator.results.summary import ledger_totals
from orchestrator.spec import JobSpec, parse_spec
from orchestrator.spec.yaml_load import load_yaml_text
from orchestrator.storage import LocalStore, open_store
from orchestrator.storage.spool import (
    drain_until,
    pending_items,
    remove_run_spool,
    run_spool_dir,
    writer_dirs,
)


def stored_spec(uri: str, options=None) -> JobSpec:
    """The resolved spec a run recorded (its `spec.yaml`)."""
    store = open_store(uri, options)
    try:
        text = store.read_bytes(SPEC_FILE)
    except FileNotFoundError:
        raise ResultsNotFound(
            f"no {SPEC_FILE} under {store.path()} (is {uri} a run's results_uri?)"
        ) from None
    return parse_spec(load_yaml_text(text), check_workload=False)


@dataclass
class RunProgress:
    """Where a run stands, from its stored tables (live or closed): what `hpo status` shows."""

    status: str  # run.json's
    done: int  # trials that ended (any way)
    running: int
    total: int  # the trials the search will run
    metric: str
    best: dict | None  # the best (trial, iteration) row so far
    cpu_hours: float
    gpu_hours: float
    cost: float | None


def run_progress(uri: str, options=None) -> RunProgress:
    """The run at `uri` as it stands: trials done / total, the best row so far, what was spent."""
    store = open_store(uri, options)
    spec = stored_spec(uri, options)
    try:
        info = json.loads(store.read_bytes(RUN_FILE))
    except FileNotFoundError:
        info = {}
    try:
        trials = load_trials(store).to_pylist()
    except ResultsNotFound:
        trials = []
    try:
        best = best_row(load_results(store))
    except ResultsNotFound:
        best = None
    running = sum(1 for t in trials if t["status"] == "running")
    ledger = info.get("ledger")
    if not ledger or info.get("status") == "running":  # live: what the trial records hold so far
        ledger = ledger_totals(trials, priced=any(t.get("cost") is not None for t in trials))
    return RunProgress(
        info.get("status", "unknown"),
        len(trials) - running,
        running,
        spec.search.num_trials(),
        spec.search.metric,
        best,
        ledger["cpu_hours"],
        ledger["gpu_hours"],
        ledger.get("cost"),
    )


@dataclass
class PullReport:
    destination: str
    files: int
    bytes: int
    rows_files: int
    checkpoints: int


def pull(uri: str, to: str | Path, *, checkpoints: bool = False, options=None) -> PullReport:
    """Copy a run's tables (and with `checkpoints`, each trial's best checkpoint) to the local folder `to`.

    The copy is a consistent snapshot even while the run is live: the results files are those the manifest
    names at the moment of the pull, and the copied manifest names exactly them."""
    source = open_store(uri, options)
    dest = LocalStore(Path(to))
    copied = read_result_files(source)
    files = list(copied)
    for name in (SPEC_FILE, RUN_FILE, TRIALS_FILE):
        try:
            copied[name] = source.read_bytes(name)
        except FileNotFoundError:
            pass
    copied[MANIFEST] = json.dumps(
        {"version": 1, "files": sorted(files), "complete": False, "pulled_from": source.uri}
    ).encode()
    n_checkpoints = 0
    if checkpoints and TRIALS_FILE in copied:
        for row in load_trials(source).to_pylist():
            best = row.get("best_checkpoint")
            if best and best.startswith(source.uri + "/"):
                rel = best[len(source.uri) + 1 :]
                copied[rel] = source.read_bytes(rel)
                n_checkpoints += 1
    for rel, data in copied.items():
        dest.write_bytes(rel, data)
    return PullReport(dest.uri, len(copied), sum(len(d) for d in copied.values()), len(files), n_checkpoints)


@dataclass
class RunInfo:
    uri: str
    name: str
    run_id: str
    status: str
    time: str
    objects: int
    bytes: int


def list_runs(storage: str, *, options=None) -> list[RunInfo]:
    """Every run under a storage root (`<storage>/<name>/<run id>/`), with its status and size."""
    store = open_store(storage, options)
    runs: dict[tuple[str, str], list[int]] = {}
    for rel, size in store.list_sizes().items():
        parts = rel.split("/")
        if len(parts) >= 3:
            runs.setdefault((parts[0], parts[1]), []).append(size)
    infos = []
    for (name, run_id), sizes in sorted(runs.items()):
        try:
            info = json.loads(store.read_bytes(f"{name}/{run_id}/{RUN_FILE}"))
        except (FileNotFoundError, ValueError):
            info = {}
        if not info and not store.exists(f"{name}/{run_id}/{SPEC_FILE}"):
            continue  # not a run
        infos.append(
            RunInfo(
                store.path(f"{name}/{run_id}"),
                name,
                run_id,
                info.get("status", "unknown"),
                info.get("time", ""),
                len(sizes),
                sum(sizes),
            )
        )
    return infos


def sync(uri: str, *, options=None) -> tuple[int, int]:
    """Upload what an outage left in the local spool for the run at `uri`. Returns (uploaded, still waiting)."""
    store = open_store(uri, options)  # a URI we cannot use is refused even when nothing waits
    spool = run_spool_dir(store.uri)  # keyed by the URI as the run stated it
    before = pending_items(spool)
    after = drain_until(store, writer_dirs(spool), 0) if before else 0
    if not after:
        remove_run_spool(store.uri)  # nothing left to keep
    return before - after, after
