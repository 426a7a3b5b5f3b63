"""A run leaves the process as it found it: environment, sys.path, working directory, loggers, Ray Tune's list
of variables it copies into trials, random states and torch's settings (ray_support/driver.py)."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import pytest
import ray_internals
import torch
from conftest import spec_dict

from orchestrator.api import run
from orchestrator.ray_support import ray_compat
from orchestrator.ray_support.driver import DriverSession
from orchestrator.spec import parse_spec


def _state() -> dict:
    return {
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "cwd": os.getcwd(),
        "propagated": ray_internals.propagated_env(),
        "loggers": {
            name: (logging.getLogger(name).level, list(logging.getLogger(name).filters))
            for name in ("ray", "ray.tune", ray_compat.TUNE_CONTROLLER_LOGGER, *ray_compat.QUIET_LOGGERS)
        },
        "random": (random.getstate(), str(np.random.get_state()[1][:4])),
        "torch": (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.get_rng_state().clone(),
        ),
        "cudnn": (
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
        ),
    }


def _same(before: dict, after: dict) -> None:
    for key in before:
        if key == "torch":
            assert before[key][:2] == after[key][:2] and torch.equal(before[key][2], after[key][2]), key
        else:
            assert before[key] == after[key], key


@pytest.mark.slow
def test_two_runs_of_two_workloads_leave_the_process_as_they_found_it(ray_cluster, tmp_path, monkeypatch):
    """Parsing the specs (which imports a user workload) and running them: sanity: true trains in this
    process (seeds, torch's threads and deterministic mode), then each search runs on the session's Ray."""
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)  # so that a run would set it
    torch.manual_seed(1234)
    before = _state()
    first = parse_spec(
        spec_dict(
            storage=str(tmp_path / "a"), sanity=True, search={"num_samples": 1}, train={"max_epochs": 1}
        )
    )
    second = parse_spec(
        spec_dict(
            storage=str(tmp_path / "b"),
            workload="tests.workloads_for_tests:digit_value",
            search={"num_samples": 1, "space": {"lr": {"loguniform": [1e-3, 1e-2]}}},
            train={"max_epochs": 1},
        )
    )
    summaries = [run(spec, progress=lambda line: None) for spec in (first, second)]
    assert [s.statuses for s in summaries] == [{"completed": 1}, {"completed": 1}]
    _same(before, _state())


def test_a_session_restores_what_is_changed_inside_it(tmp_path):
    before = _state()
    with DriverSession() as session:
        os.environ["HPO_SESSION_TEST"] = "1"
        sys.path.insert(0, str(tmp_path))
        os.chdir(tmp_path)
        with session.private_cwd():
            assert os.getcwd() != str(tmp_path)
        assert os.getcwd() == str(tmp_path)
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
        assert "AWS_SECRET_ACCESS_KEY" not in ray_internals.propagated_env()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    _same(before, _state())


def test_a_working_directory_deleted_under_the_driver_is_one_line_not_a_traceback(
    tmp_path, monkeypatch, capsys
):
    """On a Ray cluster whose nodes share one temp dir, each node re-extracts a submitted job's working_dir into
    the same place, deleting the copy its driver runs in. While Tune runs (from the session's private dir) that
    costs nothing; a driver that starts in a deleted directory says so in one line, exit 1."""
    from conftest import hpo

    from orchestrator.errors import WorkingDirGone

    job = tmp_path / "job"
    job.mkdir()
    monkeypatch.chdir(job)
    with DriverSession() as session:
        with session.private_cwd():
            job.rmdir()  # Ray re-extracting the job's working_dir
        # back where it was, if that exists again; the session's exit does not fail either
    monkeypatch.chdir(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    gone.rmdir()
    with pytest.raises(WorkingDirGone, match="working directory .*was deleted while it ran"):
        DriverSession().__enter__()
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nworkload: userwl:make\nsearch: {metric: loss, space: {x: {uniform: [0, 1]}}}\n")
    code, out, err = hpo(capsys, "validate", str(spec))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "was deleted while it ran" in err, err


@pytest.mark.slow
def test_a_second_run_from_another_thread_is_refused_in_one_line_and_the_first_finishes(
    ray_cluster, tmp_path
):
    """A session changes process-wide state (environment, working directory, signal handlers, Ray's
    connection), so two runs in two threads of one process would race: the second is refused, in one line,
    while the first runs; the first ends as if alone. (The session's Ray is this thread's: runs nest in it.)"""
    import threading

    from conftest import paced_spec, wait_for

    from orchestrator.errors import RunError
    from orchestrator.results import load_results
    from orchestrator.storage import open_store

    first = parse_spec(paced_spec("first", tmp_path / "a", samples=1, concurrency=1, train={"max_epochs": 4}))
    second = parse_spec(
        paced_spec("second", tmp_path / "b", samples=1, concurrency=1, train={"max_epochs": 1})
    )
    started, refused = [], []

    def second_thread():
        wait_for(lambda: started, "the first run's start", 120, every_s=0.1)
        store = open_store(started[0])
        wait_for(lambda: store.exists("lease.json"), "the first run's lease", 120, every_s=0.1)
        try:
            run(second, progress=lambda line: None)
        except RunError as error:
            refused.append(str(error))

    other = threading.Thread(target=second_thread, name="second-run", daemon=True)
    other.start()
    summary = run(first, progress=lambda line: None, on_start=started.append)
    other.join(60)
    assert refused and "\n" not in refused[0], refused
    assert "another hpo run, sanity check or ensemble holds this process (thread 'MainThread')" in refused[0]
    assert summary.status == "finished" and load_results(summary.results_uri).num_rows == 4
    assert not (tmp_path / "b").exists()  # the refused run wrote nothing
