"""Operations on stored runs: pull a run to local disk, list the runs under a storage root, sync a spool."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ResultsDamaged, ResultsNotFound, RunError
from orchestrator.results.layout import (
    CHECKPOINT_DIR,
    MANIFEST,
    RESULTS_DIR,
    RUN_FILE,
    SPEC_FILE,
    TRIALS_FILE,
)
from orchestrator.results.reader import (
    TRIALS_COLUMNS,
    best_row,
    damaged,
    decode_stored,
    load_results,
    load_trials,
    parse_json,
    read_json,
    read_result_files,
    run_info,
)
from orchestrator.results.summary import ledger_totals
from orchestrator.spec import JobSpec, SpecError, parse_spec
from orchestrator.spec.yaml_load import YamlError, load_yaml_text
from orchestrator.storage import LocalStore, StoreError, open_store
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
    try:
        data = load_yaml_text(text)
    except YamlError as exc:
        raise damaged(store, SPEC_FILE, f"cannot be read ({exc})") from None
    try:
        return parse_spec(data, check_workload=False)
    except SpecError as exc:
        raise SpecError(f"{store.path(SPEC_FILE)}: {exc}") from None


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
    info = run_info(store)
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
        spec.search.primary.metric,
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
    rows: int = 0  # in the results files, each decoded before anything was written
    updated: bool = False  # the destination held an earlier pull of this run, now brought up to date


def pull(uri: str, to: str | Path, *, checkpoints: bool = False, options=None) -> PullReport:
    """Copy a run's tables (and with `checkpoints`, each trial's best checkpoint) to the local folder `to`.

    The copy is a consistent snapshot even while the run is live: the results files are those the manifest
    names at the moment of the pull, and the copied manifest names exactly them. Everything is read and checked
    (each Parquet file decoded, run.json and spec.yaml parsed, each checkpoint found) before anything is written;
    a new destination is written beside its place and renamed into it. `to` must be new, empty, or an earlier
    pull of this run (then it is brought up to date); never the run itself or a folder inside it."""
    source = open_store(uri, options)
    dest = Path(to).expanduser().resolve()
    updating = _check_destination(source, dest)
    copied = read_result_files(source)
    files = sorted(copied)
    rows = sum(decode_stored(source, rel, data).num_rows for rel, data in copied.items())
    trials = None
    for name in (SPEC_FILE, RUN_FILE, TRIALS_FILE):
        try:
            copied[name] = source.read_bytes(name)
        except FileNotFoundError:
            continue
    if SPEC_FILE in copied:
        try:
            load_yaml_text(copied[SPEC_FILE])
        except YamlError as exc:
            raise damaged(source, SPEC_FILE, f"cannot be read ({exc})") from None
    if RUN_FILE in copied:
        parse_json(source, RUN_FILE, copied[RUN_FILE])
    if TRIALS_FILE in copied:
        trials = decode_stored(source, TRIALS_FILE, copied[TRIALS_FILE], TRIALS_COLUMNS)
    manifest = {"version": 1, "files": files, "complete": False, "pulled_from": source.uri}
    n_checkpoints = 0
    if checkpoints and trials is not None:
        found = _best_checkpoints(source, trials.to_pylist())
        copied.update(found)
        n_checkpoints = len(found)
    copied[MANIFEST] = json.dumps(manifest).encode()  # last: a reader following it sees the whole copy
    if updating:
        _update(LocalStore(dest), copied)
    else:
        _write_new(dest, copied)
    return PullReport(
        str(dest),
        len(copied),
        sum(len(d) for d in copied.values()),
        len(files),
        n_checkpoints,
        rows,
        updating,
    )


def _check_destination(source, dest: Path) -> bool:
    """Refuse a destination that is a file, holds something other than an earlier pull of this run, or lies in
    the run itself. True when it holds an earlier pull of the run (to be updated), False when new or empty."""
    if isinstance(source, LocalStore) and (dest == source.root or source.root in dest.parents):
        raise RunError(
            f"--to {dest} is inside the run being pulled ({source.uri}); pull to a folder outside it"
        )
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise RunError(f"--to {dest} is a file; pull to a new or empty folder")
    if not any(dest.iterdir()):
        return False
    there = LocalStore(dest)
    try:  # what the folder holds; the source's own files are checked as they are copied
        pulled_from, pulled = read_json(there, MANIFEST).get("pulled_from"), run_info(there)
    except (FileNotFoundError, ResultsDamaged):
        pulled_from, pulled = None, {}
    # an earlier pull of this run (from this URI, or of the same run found elsewhere) is the only folder a pull
    # writes into; a run's own folder is never one (its manifest says no pulled_from)
    if not pulled_from or (pulled_from != source.uri and not _same_run(pulled, run_info(source))):
        raise RunError(
            f"--to {dest} is not empty and holds no earlier pull of {source.uri}; pull to a new or empty folder"
        )
    return True


def _same_run(a: dict, b: dict) -> bool:
    return bool(a.get("run_id")) and (a.get("name"), a.get("run_id")) == (b.get("name"), b.get("run_id"))


def _best_checkpoints(source, trials: list[dict]) -> dict[str, bytes]:
    """{relative path: bytes} of each trial's best checkpoint. A link names the checkpoint where the run was
    when it was written: a run moved since (copied to another folder or bucket) has it at the same place
    relative to the run, checkpoints/<trial>/<file>. Every checkpoint that cannot be read makes one error."""
    found: dict[str, bytes] = {}
    lost: list[str] = []
    for trial in trials:
        link, trial_id = trial.get("best_checkpoint"), trial["trial_id"]
        if not link:
            continue
        name = link.rsplit("/", 1)[-1]
        rel = f"{CHECKPOINT_DIR}/{trial_id}/{name}"
        if {trial_id, name} & {"", ".", ".."} or "/" in trial_id or not link.endswith("/" + rel):
            lost.append(
                f"{link!r}, the best checkpoint {TRIALS_FILE} names for {trial_id!r}, is not a file of a run's "
                f"{CHECKPOINT_DIR}/{trial_id}/"
            )
            continue
        try:
            found[rel] = source.read_bytes(rel)
        except FileNotFoundError:
            lost.append(
                f"{source.path(rel)}, the best checkpoint {TRIALS_FILE} names for {trial_id}, is missing"
            )
    if lost:
        more = (
            f" (and {len(lost) - 1} more of {len(lost) + len(found)} best checkpoints)"
            if len(lost) > 1
            else ""
        )
        raise ResultsDamaged(
            f"{lost[0]}{more}; nothing was pulled: pull without --checkpoints to copy the tables alone"
        )
    return found


def _write_new(dest: Path, copied: dict[str, bytes]) -> None:
    """Write the copy into a hidden folder beside `dest`, then rename it to `dest` (new or an empty folder):
    however the writing ends, `dest` holds the whole copy or nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.pull-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        store = LocalStore(staging)
        for rel, data in copied.items():
            store.write_bytes(rel, data)
        os.rename(staging, dest)  # replaces an empty folder
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(
            exc, StoreError
        ):  # a full disk, a folder made meanwhile
            raise StoreError(
                f"cannot write the copy to {dest} ({exc.strerror or exc}); nothing was written"
            ) from None
        raise


def _update(dest: LocalStore, copied: dict[str, bytes]) -> None:
    """Bring an earlier pull up to date: every file (each written atomically), the manifest last; then the
    results files it no longer names go, so a glob over the copy reads each row once."""
    try:
        for rel, data in copied.items():
            dest.write_bytes(rel, data)
    except StoreError:
        raise
    except OSError as exc:  # the manifest is written last: the earlier pull it names is still whole
        raise StoreError(
            f"cannot update {dest.uri} ({exc.strerror or exc}); it still holds the earlier pull"
        ) from None
    named = set(json.loads(copied[MANIFEST])["files"])
    for rel in dest.list(RESULTS_DIR):
        if rel.endswith(".parquet") and rel not in named:
            dest.delete(rel)


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
            info = read_json(store, f"{name}/{run_id}/{RUN_FILE}")
        except FileNotFoundError:
            info = {}
        except ResultsDamaged:
            info = {"status": f"damaged ({RUN_FILE} unreadable)"}
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
