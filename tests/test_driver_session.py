"""A run leaves the process as it found it: environment, sys.path, working directory, loggers, Ray Tune's list
of variables it copies into trials, random states and torch's settings (execution/driver.py)."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import pytest
import torch
from conftest import spec_dict

from orchestrator.api import run
from orchestrator.execution import ray_compat
from orchestrator.execution.driver import DriverSession
from orchestrator.spec import parse_spec


def _state() -> dict:
    return {
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "cwd": os.getcwd(),
        "propagated": ray_compat.propagated_env(),
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
        assert "AWS_SECRET_ACCESS_KEY" not in ray_compat.propagated_env()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    _same(before, _state())
