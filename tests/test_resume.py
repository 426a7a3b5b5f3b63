"""`hpo resume`: SIGKILL `hpo run` and everything it started, resume from storage, end with every row once."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess

import pyarrow.parquet as pq
import pytest
import s3server
import yaml
from conftest import (
    HPO,
    ROOT,
    hpo,
    in_trial_order,
    kill_family,
    paced_spec,
    pbt_spec,
    spec_dict,
    spec_file,
)
from contract import check_contract, deterministic_rows

from orchestrator.api import run
from orchestrator.results import RunSummary, load_results
from orchestrator.spec import load_spec, parse_spec
from orchestrator.storage import open_store

pytestmark = pytest.mark.slow


FINISHED_LINE = re.compile(r"\] (trial_\d+) (?:completed|stopped by ASHA) after ")


def run_and_kill(spec_path, trials_done: int = 0, at_line: str | None = None) -> tuple[str, set[str]]:
    """Start `hpo run`, SIGKILL it and every process it started once it reports `trials_done` finished trials
    (counted on its progress output, so storage lag cannot let the job finish first), or once a progress line
    contains `at_line`; return its URI and the trials it reported finished."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [*HPO, "run", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    finished = set()
    try:  # killed however this ends: a failing test must not leave a job and its Ray running
        uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
        for line in proc.stderr:
            if found := FINISHED_LINE.search(line):
                finished.add(found.group(1))
            if (at_line is None and len(finished) >= trials_done) or (
                at_line is not None and at_line in line
            ):
                break
    finally:
        kill_family(proc)
    assert json.loads(open_store(uri).read_bytes("run.json"))["status"] == "running"  # it died mid-run
    return uri, finished


def assert_not_rerun(finished: set[str], resumed_stderr: str) -> None:
    """No trial the killed run finished reaches Ray again: it never starts, and the resume counts it."""
    assert not [name for name in finished if f"] {name} started" in resumed_stderr], resumed_stderr[-3000:]
    passed_over = int(re.search(r"(\d+) finished trial\(s\) are not rerun", resumed_stderr).group(1))
    assert passed_over >= len(finished)


# A user's own loop (tests/workloads_for_tests.py:custom_train: augmentation, AdamW with a per-batch schedule, its
# own checkpoint dict): resume must continue it exactly as it continues the standard loop. In the main process:
# DataLoader workers forked every epoch of every trial cost this test more than its training did, and how a
# continuation with loader workers stays bit-identical is test_custom_training.py's. Two objectives and a
# constraint: the resumed run's front, ranks and feasibility are the uninterrupted run's (check_contract); a
# conditional space: each resumed trial keeps the branch it had.
KILLED = dict(
    name="killed",
    workload="tests.workloads_for_tests:custom_loop_optimizers",
    search={
        "num_samples": 6,
        "max_concurrent": 2,
        "metric": ["val_f1", "val_loss"],
        "mode": ["max", "min"],
        "constraints": ["val_f1 >= 0.3"],
        "space": {  # conditional: momentum is searched, and reaches the loop, only for sgd trials
            "optimizer": {
                "choice": {
                    "adamw": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
                    "sgd": {"lr": {"loguniform": [1.0e-2, 1.0e-1]}, "momentum": {"uniform": [0.8, 0.95]}},
                }
            },
            "width": {"choice": [4, 8]},
        },
        "fixed": {"batch_size": 64, "loader_workers": 0},
    },
    train={"max_epochs": 4},
)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tmp_path_factory):
    """The killed runs' job, run once without interruption: what every resume must end up equal to."""
    where = tmp_path_factory.mktemp("clean")
    spec = load_spec(spec_file(where / "job.yaml", spec_dict(**KILLED)))
    summary = run(spec, storage=str(where / "runs"), progress=lambda line: None)
    return summary, load_results(summary.results_uri)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_then_resume_ends_with_every_row_once_and_the_uninterrupted_summary(
    where, uninterrupted, tmp_path, request, capsys
):
    storage = (
        str(tmp_path / "runs") if where == "local" else f"s3://{s3server.BUCKET}/resume-{tmp_path.name[-12:]}"
    )
    if where == "s3":
        request.getfixturevalue("s3")
    spec_path = spec_file(tmp_path / "job.yaml", spec_dict(storage=storage, **KILLED))
    uri, finished = run_and_kill(spec_path, trials_done=2)
    # A spec that is not the run's is refused, naming the first difference, and touches nothing.
    changed = spec_file(
        tmp_path / "changed.yaml", spec_dict(storage=storage, **{**KILLED, "train": {"max_epochs": 5}})
    )
    # What a driver killed between writing a part and naming it in the manifest (or between naming a compacted
    # file and deleting what it replaced) leaves: a results file no manifest names. The resume removes it.
    killed_store = open_store(uri)
    named = json.loads(killed_store.read_bytes("results/_manifest.json"))["files"]
    killed_store.write_bytes("results/part-900000.parquet", killed_store.read_bytes(named[0]))
    stored = open_store(uri).list_sizes()
    code, _, err = hpo(capsys, "resume", uri, "--spec", str(changed))
    assert code == 2 and "Traceback" not in err
    assert "differs from the run's at train.max_epochs: 5 in the given spec, 4 in the run" in err
    assert open_store(uri).list_sizes() == stored
    code, out, err = hpo(capsys, "resume", uri, "--spec", str(spec_path), "--output", "json")
    assert code == 0, err[-3000:]
    assert "resuming: " in err and "row(s) kept" in err
    assert_not_rerun(finished, err)
    summary = RunSummary(**json.loads(out.strip().splitlines()[-1]))
    rows, _ = check_contract(summary, load_spec(spec_path))  # every (trial, iteration) exactly once
    on_disk = [f for f in killed_store.list("results") if f.endswith(".parquet")]  # what a glob reads
    assert "results/part-900000.parquet" not in on_disk
    assert (
        sum(pq.read_metadata(io.BytesIO(killed_store.read_bytes(f))).num_rows for f in on_disk)
        == rows.num_rows
    )
    clean, clean_rows = uninterrupted
    assert deterministic_rows(in_trial_order(rows)) == deterministic_rows(in_trial_order(clean_rows))
    assert (summary.best, summary.statuses, summary.num_trials, summary.front) == (
        clean.best,
        clean.statuses,
        clean.num_trials,
        clean.front,
    )

    # Resuming a finished run says so and changes nothing.
    before = open_store(uri).read_bytes("results/_manifest.json")
    code, _, err = hpo(capsys, "resume", uri)
    assert code == 0 and "already finished; nothing to resume" in err
    assert open_store(uri).read_bytes("results/_manifest.json") == before


@pytest.mark.parametrize(
    "objectives",
    [
        {"algorithm": "hyperopt"},
        # NSGA-II over two objectives with ASHA ranking its rungs by Pareto front: generations of 6 from trial 6;
        # over a conditional space, whose function's branches search x2 and x3 (x3 under hartmann6 only)
        {
            "algorithm": "nsga2",
            "metric": ["train_loss", "val_loss"],
            "mode": ["min", "min"],
            "num_samples": 24,
            "space": {
                "x1": {"uniform": [0, 1]},
                "function": {
                    "choice": {
                        "branin": {"x2": {"uniform": [0, 1]}},
                        "hartmann6": {"x2": {"uniform": [0, 1]}, "x3": {"uniform": [0, 1]}},
                    }
                },
            },
        },
    ],
    ids=["tpe", "nsga2-two-objectives-conditional"],
)
def test_resume_of_an_adaptive_search_gives_tpe_and_asha_the_history_they_had(
    ray_cluster, tmp_path, capsys, objectives
):
    """TPE proposes from the results it has seen and ASHA stops trials against its rungs: both must be told
    what the finished trials reported, or the resumed run's later trials differ from an uninterrupted run's.
    At max_concurrent 1 both are whole-job deterministic; the kill comes after TPE's 20 random start-up
    trials, so the trials after it are TPE's own proposals (and NSGA-II's later generations, with MO-ASHA). The
    synthetic workload's trials take milliseconds, so from trial 22 on they wait for a file the test creates
    after the kill (tests/workloads_for_tests.py)."""
    go = tmp_path / "go"
    spec = spec_dict(
        name="adaptive",
        workload="tests.workloads_for_tests:held_synthetic",
        storage=str(tmp_path / "runs"),
        search={
            "num_samples": 26,
            "max_concurrent": 1,
            "space": {"x1": {"uniform": [0, 1]}, "x2": {"uniform": [0, 1]}},
            "fixed": {"function": "branin", "hold_marker": str(go), "hold_from": 22},
            **objectives,
        },
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
        train={"max_epochs": 9},
    )
    if "function" in spec["search"]["space"]:  # searched: no longer fixed
        del spec["search"]["fixed"]["function"]
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    uri, finished = run_and_kill(spec_path, trials_done=22)
    go.touch()  # the resume and the uninterrupted run go through
    code, out, err = hpo(capsys, "resume", uri, "--output", "json")
    assert code == 0, err[-3000:]
    assert_not_rerun(finished, err)
    summary = RunSummary(**json.loads(out.strip().splitlines()[-1]))
    rows = load_results(uri)  # (no checkpoints to check: the synthetic workload trains nothing)
    uninterrupted = run(load_spec(spec_path), storage=str(tmp_path / "clean"), progress=lambda line: None)
    expected = load_results(uninterrupted.results_uri)
    assert deterministic_rows(in_trial_order(rows)) == deterministic_rows(in_trial_order(expected))
    assert summary.statuses == uninterrupted.statuses and "stopped_early" in summary.statuses
    assert summary.front == uninterrupted.front


def test_resume_of_a_run_whose_driver_still_runs_is_refused_naming_it(ray_cluster, tmp_path, capsys):
    """Two drivers on one run would both train its remaining trials: the second is refused, in one line naming the
    live one, and touches nothing; once that driver is gone (SIGKILL), its lease no longer holds the run."""
    from orchestrator.execution.lease import RunLease

    spec_path = spec_file(
        tmp_path / "job.yaml",
        paced_spec("live", tmp_path / "runs", samples=2, concurrency=1, train={"max_epochs": 30}),
    )
    proc = subprocess.Popen(
        [*HPO, "run", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )
    try:
        # printed once the run holds its lease and has written spec.yaml and run.json (runner._open); its first
        # rows would take the results writer's first flush, 10 s more, and change nothing here
        uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
        store = open_store(uri)
        before = store.read_bytes("spec.yaml"), store.read_bytes("run.json")
        code, out, err = hpo(capsys, "resume", uri)
        assert code == 2 and "Traceback" not in err, err
        assert f"is being run by driver pid {proc.pid} on " in err and len(err.strip().splitlines()) == 1, err
        assert (store.read_bytes("spec.yaml"), store.read_bytes("run.json")) == before
    finally:
        kill_family(proc)
    RunLease(store, progress=lambda line: None).check_free()  # a dead driver on this host holds nothing


def test_add_trials_grows_a_finished_run_as_if_it_had_asked_for_them_from_the_start(
    ray_cluster, tmp_path, capsys
):
    """`hpo resume URI --add-trials N`: a finished NSGA-II search of 6 trials grows to 10, its sampler told every
    result the run has (its second generation comes from them); at max_concurrent 1 the grown run's rows equal
    a 10-trial run's. A grid cannot grow."""
    search = {
        "algorithm": "nsga2",
        "num_samples": 6,
        "max_concurrent": 1,
        "metric": ["train_loss", "val_loss"],
        "mode": ["min", "min"],
        "space": {"x1": {"uniform": [0.0, 1.0]}, "x2": {"uniform": [0.0, 1.0]}},
        "fixed": {"function": "branin"},
    }
    job = dict(name="grown", workload="synthetic", search=search, train={"max_epochs": 2})
    spec_path = spec_file(tmp_path / "job.yaml", spec_dict(storage=str(tmp_path / "runs"), **job))
    grown = run(load_spec(spec_path), progress=lambda line: None)
    code, out, err = hpo(capsys, "resume", grown.results_uri, "--add-trials", "4", "--output", "json")
    assert code == 0, err[-3000:]
    assert "adding 4 trial(s): 10 in all" in err and "6 finished trial(s) are not rerun" in err, err
    summary = RunSummary(**json.loads(out.strip().splitlines()[-1]))
    assert summary.num_trials == 10 and summary.statuses == {"completed": 10} and summary.front
    assert load_spec(f"{grown.results_uri}/spec.yaml").search.num_samples == 10
    more = {**job, "search": {**search, "num_samples": 10}}
    fresh = run(parse_spec(spec_dict(storage=str(tmp_path / "fresh"), **more)), progress=lambda line: None)
    expected = load_results(fresh.results_uri)
    assert deterministic_rows(in_trial_order(load_results(grown.results_uri))) == deterministic_rows(
        in_trial_order(expected)
    )
    assert summary.front == fresh.front

    grid = {
        **job,
        "search": {
            **search,
            "algorithm": "grid",
            "metric": "val_loss",
            "mode": "min",
            "space": {"x1": {"choice": [0.1, 0.9]}},
        },
    }
    gridded = run(parse_spec(spec_dict(storage=str(tmp_path / "grid"), **grid)), progress=lambda line: None)
    code, _, err = hpo(capsys, "resume", gridded.results_uri, "--add-trials", "2")
    assert code == 2 and "is a grid search, whose num_samples counts passes over the grid" in err, err


def test_a_pbt_run_on_s3_killed_at_a_step_resumes_to_the_uninterrupted_rows(
    ray_cluster, s3, tmp_path, capsys
):
    """PBT (population 4, max_concurrent 2, a step every 2 of 8 epochs) on SeaweedFS, SIGKILLed as its second step
    is announced: the resume takes the steps the dead run took again from the stored rows, carries out the
    exploits its trials had not, and ends with the uninterrupted run's rows (configs, lineage, metrics), each
    row once."""
    storage = f"s3://{s3server.BUCKET}/pbt-{tmp_path.name[-12:]}"
    spec_path = spec_file(tmp_path / "job.yaml", pbt_spec(storage, name="pbt-killed", max_epochs=8))
    uri, _ = run_and_kill(spec_path, at_line="] PBT step 2 at epoch 4: ")
    code, out, err = hpo(capsys, "resume", uri, "--output", "json")
    assert code == 0, err[-3000:]
    assert "PBT: 1 step(s) taken again from the stored rows" in err or "PBT: 2 step(s)" in err, err[-3000:]
    summary = RunSummary(**json.loads(out.strip().splitlines()[-1]))
    rows, _ = check_contract(summary, load_spec(spec_path))  # every (trial, iteration) exactly once
    clean = run(load_spec(spec_path), storage=str(tmp_path / "clean"), progress=lambda line: None)
    expected = load_results(clean.results_uri)
    assert deterministic_rows(in_trial_order(rows)) == deterministic_rows(in_trial_order(expected))
    assert summary.statuses == clean.statuses == {"completed": 4}
    assert any(r["parent_trial"] for r in rows.to_pylist())
