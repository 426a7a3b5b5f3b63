"""The workload protocol: what a trial trains.

A workload is a `Workload` value. The trial runner owns the training loop (optimizer, batches, DDP,
checkpoints, metrics); a workload only says how to build the model and the data from a config:

- `build_model(config)` returns a fresh `torch.nn.Module`. It is called after the trial's seed is set, so
  weight initialisation follows the trial seed.
- `load_data(config)` returns `Splits(train, val, test)`, each an `(inputs, targets)` pair of tensors. The
  split must not depend on the trial's seed, so that trials are comparable.
- `task` is "classification" (integer targets, cross-entropy, accuracy reported) or "regression" (float
  targets, mean squared error).
- `hyperparameters` maps every hyperparameter the workload understands to its default. A spec may search or
  fix only these names, so a misspelt one is caught before anything runs.

A user's own workload is a zero-argument function returning a `Workload`, named in the spec as
"package.module:function" (workloads/__init__.py resolves it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

# Hyperparameters the standard training loop (train/loop.py) reads; every workload accepts them.
TRAINING_HYPERPARAMETERS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "optimizer": "adam",  # adam | sgd
    "momentum": 0.9,  # sgd only
}
OPTIMIZERS = ("adam", "sgd")
# (low, low allowed, high exclusive): values torch would refuse only once a trial has started.
TRAINING_RANGES = {"lr": (0.0, False, None), "weight_decay": (0.0, True, None), "momentum": (0.0, True, 1.0)}


class Splits(NamedTuple):
    train: tuple[Any, Any]
    val: tuple[Any, Any]
    test: tuple[Any, Any]


@dataclass(frozen=True)
class Workload:
    name: str
    build_model: Callable[[Mapping[str, Any]], Any]
    load_data: Callable[[Mapping[str, Any]], Splits]
    task: Literal["classification", "regression"] = "classification"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    # Set for workloads that evaluate a function instead of training (the `synthetic` benchmark functions):
    # (config, epoch) -> metrics. build_model and load_data are then never called.
    objective: Callable[[Mapping[str, Any], int], dict[str, float]] | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics every epoch reports, in column order."""
        base = ("train_loss", "val_loss")
        return base + ("val_accuracy",) if self.task == "classification" else base

    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter this workload accepts, with its default."""
        return {**TRAINING_HYPERPARAMETERS, **self.hyperparameters}


class WorkloadError(ValueError):
    """A workload name that cannot be resolved; the message names the fix."""
