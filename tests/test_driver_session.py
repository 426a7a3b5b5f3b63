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
from ray.tune.execution import class_cache

from orchestrator.api import run
from orchestrator.execution.driver import DriverSession
from orchestrator.execution.ray_compat import QUIET_LOGGERS
from orchestrator.spec import parse_spec


def _state() -> dict:
    return {
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "cwd": os.getcwd(),
        "propagated": set(class_cache.ENV_VARS_TO_PROPAGATE),
        "loggers": {name: logging.getLogger(name).level for name in ("ray", "ray.tune", *QUIET_LOGGERS)},
        "random": (random.getstate(), str(np.random.get_state()[1][:4])),
        "torch": (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.get_rng_state().clone(),
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
    # sanity: true trains in this process (seeds, torch's threads and deterministic mode), then the search runs
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
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)  # so that a run would set it
    torch.manual_seed(1234)
    before = _state()
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
        assert "AWS_SECRET_ACCESS_KEY" not in class_cache.ENV_VARS_TO_PROPAGATE
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    _same(before, _state())
