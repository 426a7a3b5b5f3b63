"""Damaged and hostile files (issue 33, items 4 and 6): a stored run whose files are cut short, garbage or gone is
named in one line, never a traceback, by `hpo results show/ls/pull`, `hpo status` (run_progress) and the
library's readers; `pull` verifies what it copies and never writes where it should not; a spec path that is a
device or a FIFO is refused before it is read. Real files in tmp_path, the CLI in this process, no Ray."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from conftest import spec_dict

from orchestrator.errors import ResultsDamaged
from orchestrator.results import ResultsSchema, ResultsWriter, load_results, load_trials
from orchestrator.results.layout import (
    ITERATION_KEY,
    MANIFEST,
    RUN_FILE,
    SPEC_FILE,
    TRIALS_FILE,
    checkpoint_file,
    trial_id,
)
from orchestrator.results.ops import run_progress
from orchestrator.spec import SpecError, load_spec, parse_spec
from orchestrator.spec.yaml_load import MAX_BYTES
from orchestrator.storage import LocalStore
from orchestrator.tracking.recorder import TrialRecorder

METRICS = ("train_loss", "val_loss", "val_accuracy")
CONFIG = {"lr": 0.01, "hidden": 16}
TRIALS, EPOCHS = 2, 2


def stored_run(root: Path, *, finished: bool = False) -> LocalStore:
    """A run as `hpo run` leaves it, written by the results writer and trial recorder (no Ray): spec.yaml,
    run.json, trials.parquet, one results part per trial (one data file once `finished`), and each trial's
    checkpoints, which its record links to."""
    data = spec_dict(storage=str(root.parent), train={"max_epochs": EPOCHS})
    spec = parse_spec(data)
    store = LocalStore(root)
    schema = ResultsSchema.for_spec(spec, METRICS)
    writer = ResultsWriter(store, schema)
    recorder = TrialRecorder(writer, schema, fixed=spec.search.fixed, max_epochs=EPOCHS)
    for index in range(TRIALS):
        name = trial_id(index)
        for epoch in range(1, EPOCHS + 1):
            store.write_bytes(checkpoint_file(name, epoch), f"{name} epoch {epoch}".encode())
            link = store.path(checkpoint_file(name, epoch))
            result = {ITERATION_KEY: epoch, "train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch + index}
            recorder.add(
                name, CONFIG, {**result, "trial_seed": 5, "checkpoint": link, "best_checkpoint": link}
            )
        recorder.record(name, CONFIG, "completed")
        writer.flush()
    recorder.sync(force=True)  # trials.parquet holds every record (record() rewrites it at most every 0.25 s)
    if finished:
        writer.finish()
    store.write_text(SPEC_FILE, yaml.safe_dump(data))
    status = "finished" if finished else "running"
    store.write_text(RUN_FILE, json.dumps({"name": spec.name, "run_id": root.name, "status": status}))
    return store


def results_files(store: LocalStore) -> list[str]:
    return json.loads(store.read_bytes(MANIFEST))["files"]


def one_line_exit_2(result, *names: str) -> str:
    """The command failed with exit 2 and one line on stderr, no traceback, naming each of `names`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("hpo: "), result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each damage: (what to do to the run's store, the file the message must name).
def _empty_manifest(store):
    (store.root / MANIFEST).write_bytes(b"")
    return MANIFEST


def _truncated_manifest(store):
    cut_short(store.root / MANIFEST)
    return MANIFEST


def _manifest_without_files(store):
    (store.root / MANIFEST).write_text(json.dumps({"version": 1, "complete": False}))
    return MANIFEST


def _manifest_naming_a_foreign_file(store):
    (store.root / MANIFEST).write_text(json.dumps({"version": 1, "files": ["../../etc/passwd"]}))
    return MANIFEST


def _truncated_results_file(store):
    rel = results_files(store)[1]
    cut_short(store.root / rel)
    return rel


def _garbage_results_file(store):
    rel = results_files(store)[0]
    (store.root / rel).write_bytes(b"PAR1 this is not a parquet file PAR1")
    return rel


def _missing_results_file(store):
    rel = results_files(store)[1]
    (store.root / rel).unlink()
    return rel


def _truncated_trials_file(store):
    cut_short(store.root / TRIALS_FILE)
    return TRIALS_FILE


RESULTS_DAMAGE = [
    _empty_manifest,
    _truncated_manifest,
    _manifest_without_files,
    _manifest_naming_a_foreign_file,
    _truncated_results_file,
    _garbage_results_file,
    _missing_results_file,
]


@pytest.mark.parametrize("damage", RESULTS_DAMAGE + [_truncated_trials_file], ids=lambda f: f.__name__[1:])
def test_damage_is_one_line_naming_the_file_from_show_pull_and_the_library(damage, tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    rel = damage(store)
    uri = store.uri
    one_line_exit_2(cli("results", "show", uri), store.path(rel), "damaged")
    one_line_exit_2(cli("results", "pull", uri, "--to", str(tmp_path / "copy")), store.path(rel))
    assert not (tmp_path / "copy").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temporary folder left either
    reader = load_trials if rel == TRIALS_FILE else load_results
    with pytest.raises(ResultsDamaged, match="damaged") as raised:
        reader(uri)
    assert store.path(rel) in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("damage", RESULTS_DAMAGE + [_truncated_trials_file], ids=lambda f: f.__name__[1:])
def test_hpo_status_names_the_damaged_file(damage, tmp_path):
    """`hpo status` prints run_progress's error as its one line (cluster_cmds catches it); it is never an
    exception it lets through, nor a run that silently has no trials."""
    store = stored_run(tmp_path / "exp" / "run-1")
    rel = damage(store)
    with pytest.raises(ResultsDamaged) as raised:
        run_progress(store.uri)
    assert store.path(rel) in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError | OSError)  # what `hpo status` turns into its one line


def test_a_missing_named_file_is_damage_not_a_run_that_kept_changing(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    rel = _missing_results_file(store)
    line = one_line_exit_2(cli("results", "show", store.uri), store.path(rel), store.path(MANIFEST))
    assert "missing" in line and "kept changing" not in line


@pytest.mark.parametrize("content", [b"", b'{"name": "t-job", "run_i', b"\xff\xfe garbage", b"[1, 2]"])
def test_a_damaged_run_json_is_named_by_status_and_ls(content, tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    (store.root / RUN_FILE).write_bytes(content)
    with pytest.raises(ResultsDamaged) as raised:
        run_progress(store.uri)
    assert store.path(RUN_FILE) in str(raised.value) and "\n" not in str(raised.value)
    result = cli("results", "ls", str(tmp_path))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (row,) = [line for line in result.stdout.splitlines() if "run-1" in line]
    assert "damaged" in row, result.stdout
    one_line_exit_2(cli("results", "pull", store.uri, "--to", str(tmp_path / "copy")), store.path(RUN_FILE))
    assert not (tmp_path / "copy").exists()


def test_a_damaged_stored_spec_is_named(tmp_path):
    store = stored_run(tmp_path / "exp" / "run-1")
    (store.root / SPEC_FILE).write_bytes(b"\x00\x01 binary")
    with pytest.raises(ResultsDamaged) as raised:
        run_progress(store.uri)
    assert store.path(SPEC_FILE) in str(raised.value)


def test_a_finished_run_that_lost_its_manifest_is_damaged(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1", finished=True)
    (store.root / MANIFEST).unlink()
    line = one_line_exit_2(cli("results", "show", store.uri), store.path(MANIFEST))
    assert "missing" in line


def test_a_run_before_its_first_manifest_reads_its_part_files(tmp_path):
    """A live run writes its first part, then its first manifest: in between (or killed there) its rows are the
    part files, read without a manifest as before."""
    store = stored_run(tmp_path / "exp" / "run-1")
    (store.root / MANIFEST).unlink()
    assert load_results(store.uri).num_rows == TRIALS * EPOCHS


# --- pull verifies what it copies --------------------------------------------------------------------------
def test_pull_copies_a_verified_snapshot_and_counts_its_rows(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    result = cli("results", "pull", store.uri, "--to", str(tmp_path / "copy"), "--checkpoints")
    assert result.returncode == 0, result.stderr
    assert f"{TRIALS * EPOCHS} rows" in result.stdout and f"{TRIALS} checkpoint(s)" in result.stdout
    assert load_results(str(tmp_path / "copy")).num_rows == TRIALS * EPOCHS
    assert len(list((tmp_path / "copy" / "checkpoints").glob("trial_*/epoch-*.pt"))) == TRIALS


def test_pull_checkpoints_of_a_moved_run_are_found_relative_to_the_run(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    moved = tmp_path / "elsewhere" / "run-1"
    shutil.copytree(store.root, moved.parent / moved.name)
    shutil.rmtree(store.root)  # the links in trials.parquet point where the run was
    result = cli("results", "pull", str(moved), "--to", str(tmp_path / "copy"), "--checkpoints")
    assert result.returncode == 0, result.stderr
    assert f"{TRIALS} checkpoint(s)" in result.stdout
    copied = sorted(p.relative_to(tmp_path / "copy") for p in (tmp_path / "copy").glob("checkpoints/*/*.pt"))
    assert [str(p) for p in copied] == [checkpoint_file(trial_id(i), EPOCHS) for i in range(TRIALS)]


def test_pull_names_a_missing_best_checkpoint_and_writes_nothing(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    missing = checkpoint_file(trial_id(1), EPOCHS)
    (store.root / missing).unlink()
    line = one_line_exit_2(
        cli("results", "pull", store.uri, "--to", str(tmp_path / "copy"), "--checkpoints"),
        store.path(missing),
    )
    assert "missing" in line and trial_id(1) in line
    assert not (tmp_path / "copy").exists()
    assert (
        cli("results", "pull", store.uri, "--to", str(tmp_path / "copy")).returncode == 0
    )  # the tables alone


# --- pull --to: never merges into another folder, never writes into the source ------------------------------
def test_pull_into_a_folder_holding_something_else_is_refused(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    other = stored_run(tmp_path / "exp" / "run-2")
    dest = tmp_path / "copy"
    assert cli("results", "pull", other.uri, "--to", str(dest)).returncode == 0
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    one_line_exit_2(cli("results", "pull", store.uri, "--to", str(dest)), str(dest))
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    one_line_exit_2(cli("results", "pull", store.uri, "--to", str(tmp_path / "notes")), "not empty")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


def test_pull_again_to_the_same_folder_updates_it_to_the_new_snapshot(tmp_path, cli):
    root = tmp_path / "exp" / "run-1"
    store = stored_run(root)
    dest = tmp_path / "copy"
    assert cli("results", "pull", store.uri, "--to", str(dest)).returncode == 0
    assert len(list((dest / "results").glob("*.parquet"))) == TRIALS  # one part per trial
    # the run finishes: its parts are compacted into one data file
    shutil.rmtree(root)
    store = stored_run(root, finished=True)
    result = cli("results", "pull", store.uri, "--to", str(dest))
    assert result.returncode == 0, result.stderr
    # the stale parts are gone: a glob over the copy reads every row once
    assert [p.name for p in (dest / "results").glob("*.parquet")] == [Path(results_files(store)[0]).name]
    assert load_results(str(dest)).num_rows == TRIALS * EPOCHS


@pytest.mark.parametrize("inside", ["", "sub", "results"])
def test_pull_never_writes_into_the_run_it_pulls(inside, tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    dest = store.root / inside if inside else store.root
    one_line_exit_2(cli("results", "pull", store.uri, "--to", str(dest)), str(store.root))
    assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before


# --- a spec path that is not a regular file ------------------------------------------------------------------
def test_a_device_as_spec_is_refused_without_reading_it(cli):
    result = cli("validate", "/dev/zero")
    line = one_line_exit_2(result, "/dev/zero")
    assert "not a regular file" in line


def test_a_fifo_as_spec_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load():
        try:
            load_spec(fifo)
        except BaseException as error:  # noqa: BLE001  (the outcome is checked below)
            outcome.append(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # blocked in open(): let it go (a writer that closes at once), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=10)
        pytest.fail(f"load_spec({fifo}) waited for a writer to open the FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], SpecError), outcome
    assert str(fifo) in str(outcome[0]) and "not a regular file" in str(outcome[0])


def test_a_spec_over_the_size_limit_is_refused_naming_the_limit(tmp_path, cli):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "#" * (MAX_BYTES + 10) + "\n")
    line = one_line_exit_2(cli("validate", str(big)), str(MAX_BYTES))
    assert str(big) in line


RESUME_REFUSES = [
    _empty_manifest,
    _truncated_manifest,
    _manifest_without_files,
    _manifest_naming_a_foreign_file,
    _missing_results_file,
]


@pytest.mark.parametrize("damage", RESUME_REFUSES, ids=lambda f: f.__name__[1:])
def test_resume_of_a_damaged_run_is_refused_before_anything_starts(damage, tmp_path, cli):
    """A resume never starts a run that has results from nothing: it names the file and touches nothing (no Ray
    starts: this test is in the fast tier, which refuses subprocesses)."""
    store = stored_run(tmp_path / "exp" / "run-1")
    rel = damage(store)
    before = {rel: store.read_bytes(rel) for rel in store.list()}
    one_line_exit_2(cli("resume", store.uri), store.path(rel), "damaged")
    assert {rel: store.read_bytes(rel) for rel in store.list()} == before


def test_resume_of_a_run_whose_run_json_is_damaged_is_refused(tmp_path, cli):
    store = stored_run(tmp_path / "exp" / "run-1")
    (store.root / RUN_FILE).write_bytes(b'{"status": "runn')
    one_line_exit_2(cli("resume", store.uri), store.path(RUN_FILE), "damaged")


def test_resume_of_a_run_a_live_driver_holds_is_refused_naming_it(tmp_path, cli):
    import socket
    import time

    from orchestrator.results.layout import LEASE_FILE

    store = stored_run(tmp_path / "exp" / "run-1")
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "heartbeat": time.time()}
    store.write_bytes(LEASE_FILE, json.dumps(lease).encode())
    line = one_line_exit_2(cli("resume", store.uri), f"is being run by driver pid {os.getpid()}")
    assert f"hpo resume {store.uri}" in line


def test_the_hidden_run_id_never_writes_over_a_stored_run(tmp_path, cli):
    """`hpo submit` picks the run id; reused by hand on an existing run it once turned 60 rows into 2 and an orphan
    file. Refused before anything starts (fast tier: no Ray may start)."""
    store = stored_run(tmp_path / "t-job" / "run-1")
    before = {rel: store.read_bytes(rel) for rel in store.list()}
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(storage=str(tmp_path))))
    line = one_line_exit_2(cli("run", str(spec), "--run-id", "run-1"), "run id 'run-1' is taken", store.uri)
    assert f"hpo resume {store.uri}" in line
    assert {rel: store.read_bytes(rel) for rel in store.list()} == before


def test_a_resume_that_meets_a_damaged_results_file_leaves_no_temp_folder(tmp_path, monkeypatch):
    """The writer caches the files it adopts; a damaged one ends the adoption, and the cache goes with it."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    store = stored_run(tmp_path / "exp" / "run-1")
    rel = _truncated_results_file(store)  # the second file: the first is cached by then
    schema = ResultsSchema.for_spec(parse_spec(spec_dict(train={"max_epochs": EPOCHS})), METRICS)
    with pytest.raises(ResultsDamaged, match=rel):
        ResultsWriter(store, schema).adopt()
    assert list(temp.iterdir()) == []
