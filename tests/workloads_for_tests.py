"""Small workloads the tests name as entry points ("tests.workloads_for_tests:NAME"); Ray workers import them
from the repository root, which is on their PYTHONPATH."""

from __future__ import annotations

import dataclasses

import torch

from orchestrator.workloads import Splits, Workload
from orchestrator.workloads.digits import digits_mlp, load_digits_splits


def _exploding_model(config):
    raise RuntimeError("model exploded on purpose")


def broken() -> Workload:
    return dataclasses.replace(digits_mlp(), name="broken", build_model=_exploding_model)


def _digit_value_splits(config) -> Splits:
    """Regression: predict the digit's value (0-9) as a float."""
    splits = load_digits_splits(config)
    return Splits(*((x, y.float()) for x, y in splits))


def _regressor(config):
    return torch.nn.Sequential(torch.nn.Linear(64, config["hidden"]), torch.nn.ReLU(),
                               torch.nn.Linear(config["hidden"], 1))


def digit_value() -> Workload:
    return Workload(name="digit-value", build_model=_regressor, load_data=_digit_value_splits, task="regression",
                    hyperparameters={"hidden": 32})
