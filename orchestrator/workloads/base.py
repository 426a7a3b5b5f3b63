"""The workload protocol: what a trial trains.

A workload is a `Workload` value, in one of two forms.

Your own training loop: `train(ctx)` is called once per trial attempt on every worker with a `TrainContext`
(train/context.py): the config, the seed (already applied), the device, `prepare_model`,
`prepare_data_loader`, `report(metrics, checkpoint=None)` and `get_checkpoint()`. `metrics` declares every
metric `report` gives and its mode ("min" or "max"); `hyperparameters` maps every hyperparameter the loop reads
to its default. It may also give `build_model`/`load_data`: `hpo sanity` and `hpo ensemble` use them. Or,
for `hpo ensemble` alone, `predict(state, split)`: given a trial's best checkpoint (`state`: the dict the
loop passed to `ctx.report(checkpoint=...)`, with the trial's hyperparameters as `state.config`) and "val" or
"test", it returns `(outputs, targets)`: class probabilities (rows summing to 1) or predicted values, and the
true labels or values, in the same order every call.

The standard loop (train/loop.py) for a model and in-memory data:

- `build_model(config)` returns a fresh `torch.nn.Module`. It is called after the trial's seed is set, so
  weight initialisation follows the trial seed.
- `load_data(config)` returns `Splits(train, val, test)`, each an `(inputs, targets)` pair of tensors. The
  split must not depend on the trial's seed, so that trials are comparable.
- `task` is "classification" (integer targets, cross-entropy, accuracy reported) or "regression" (float
  targets, mean squared error).
- `hyperparameters` maps the workload's own hyperparameters to their defaults; the loop's (lr, batch_size,
  optimizer, ...) are added. A spec may search or fix only these names, so a misspelt one is caught before
  anything runs.

A user's own workload is a zero-argument function returning a `Workload`, named in the spec as
"package.module:function" (workloads/__init__.py resolves it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

# Hyperparameters the standard training loop (train/loop.py) reads; every workload it trains accepts them.
TRAINING_HYPERPARAMETERS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "optimizer": "adam",  # adam | adamw | sgd
    "momentum": 0.9,  # sgd only
    "lr_schedule": "constant",  # constant | cosine | linear (to 0 at the last step), stepped per batch
    "warmup_frac": 0.0,  # the first fraction of all steps ramps the learning rate up linearly from 0
    "grad_clip": 0.0,  # clip the gradients' global norm to this; 0: off
}
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
# The standard loop's hyperparameters that take one of a list of names.
TRAINING_CHOICES = {"optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES}
# (low, low allowed, high exclusive): values torch would refuse only once a trial has started.
TRAINING_RANGES = {
    "lr": (0.0, False, None),
    "weight_decay": (0.0, True, None),
    "momentum": (0.0, True, 1.0),
    "warmup_frac": (0.0, True, 1.0),
    "grad_clip": (0.0, True, None),
}


class Splits(NamedTuple):
    train: tuple[Any, Any]
    val: tuple[Any, Any]
    test: tuple[Any, Any]


class CheckpointState(dict):
    """A trial's checkpoint as its training function stored it, given to `Workload.predict`; `config` is the
    trial's hyperparameters (searched and fixed) and `trial_id` its name."""

    def __init__(self, state: Mapping[str, Any], *, config: Mapping[str, Any], trial_id: str):
        super().__init__(state)
        self.config, self.trial_id = dict(config), trial_id


class WorkloadError(ValueError):
    """A workload name that cannot be resolved; the message names the fix."""


METRIC_MODES = ("min", "max")
STANDARD_METRICS = {"train_loss": "min", "val_loss": "min"}  # + val_accuracy (max) for classification


@dataclass(frozen=True)
class Workload:
    name: str
    build_model: Callable[[Mapping[str, Any]], Any] | None = None
    load_data: Callable[[Mapping[str, Any]], Splits] | None = None
    task: Literal["classification", "regression"] = "classification"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    # The user's own training loop, called with a TrainContext; the standard loop is then not used.
    train: Callable[[Any], None] | None = None
    # Every metric a report gives -> "min" or "max". Default: the standard loop's metrics for the task.
    metrics: Mapping[str, str] | None = None
    # hpo ensemble without build_model/load_data: (CheckpointState, "val" | "test") -> (outputs, targets)
    predict: Callable[[CheckpointState, str], tuple[Any, Any]] | None = None

    def __post_init__(self):
        if self.metrics is None:
            extra = {"val_accuracy": "max"} if self.task == "classification" else {}
            object.__setattr__(self, "metrics", {**STANDARD_METRICS, **extra})
        bad = {k: v for k, v in self.metrics.items() if v not in METRIC_MODES}
        if bad or not self.metrics:
            raise WorkloadError(
                f"workload {self.name}: metrics must map each reported metric to 'min' or 'max' "
                f"(got {dict(bad) or 'nothing'})"
            )
        if self.train is None and (self.build_model is None or self.load_data is None):
            raise WorkloadError(
                f"workload {self.name}: give train (your own loop), or build_model and load_data "
                "(the standard loop)"
            )

    @property
    def uses_standard_loop(self) -> bool:
        """True when hpo's standard loop trains it (build_model + load_data, no train of its own)."""
        return self.train is None

    def missing_for(self, command: str) -> str | None:
        """Why `hpo sanity` or `hpo ensemble` cannot use this workload, or None when it can."""
        if self.build_model is not None and self.load_data is not None:
            return None
        if command == "ensemble" and self.predict is not None:
            return None
        gives = [n for n in ("build_model", "load_data") if getattr(self, n) is not None]
        lacks = [n for n in ("build_model", "load_data") if getattr(self, n) is None]
        needs = (
            "build_model and load_data (to retrain its models on the data)"
            if command == "sanity"
            else "predict(state, split), or build_model and load_data (to rebuild its models)"
        )
        has = (
            f"it gives {' and '.join(gives)} but not {' or '.join(lacks)}"
            if gives
            else f"it gives no {' or '.join(lacks)}"
        )
        return f"workload {self.name}: {command} needs {needs}; {has}"

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics every report gives, in column order."""
        return tuple(self.metrics)

    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter this workload accepts, with its default."""
        loop = TRAINING_HYPERPARAMETERS if self.uses_standard_loop else {}
        return {**loop, **self.hyperparameters}
