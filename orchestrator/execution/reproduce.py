"""`hpo reproduce URI TRIAL_ID`: rerun one trial from its recorded config and seed and compare every metric
of every recorded epoch, bit for bit, with what the run stored (ray #43900, #13616: "the best trial can't be
reproduced"). A 1-worker trial reruns in this process; a multi-worker trial as a TorchTrainer with the same
worker count on this machine's Ray (embedded unless one is running); on CPU or GPU as the run's spec says.
It writes nothing to the run. Determinism holds for the same hardware type, library versions and thread count (see
train/determinism.py), so a difference across machines is information, not necessarily a bug.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field

import torch

from orchestrator.errors import RunError, SpecError, WorkloadCodeFailed
from orchestrator.execution.driver import DriverSession
from orchestrator.execution.runner import plan
from orchestrator.results import config_of, load_results, load_trials
from orchestrator.results.layout import ITERATION_KEY
from orchestrator.results.ops import stored_spec
from orchestrator.storage import LocalStore, open_store
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import CHECKPOINT_KEY


@dataclass
class Reproduction:
    trial_id: str
    iterations: int
    identical: bool
    first_difference: dict | None = None  # iteration, metric, recorded, reproduced
    metrics: list[str] = field(default_factory=list)
    # the last checkpoint's contents (the training code's dict: weights, optimizer, ...) compared tensor by
    # tensor: "identical", "differs at <key path>", or why it was not compared
    checkpoint: str = "not compared"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.identical:
            return (
                f"{self.trial_id}: bit-identical ({self.iterations} epoch(s), "
                f"{', '.join(self.metrics)} compared exactly; last checkpoint: {self.checkpoint})"
            )
        if self.first_difference is None:
            return (
                f"{self.trial_id}: every metric is bit-identical, but the last checkpoint {self.checkpoint}"
            )
        d = self.first_difference
        return (
            f"{self.trial_id}: differs first at epoch {d['iteration']}, {d['metric']}: recorded "
            f"{d['recorded']!r}, reproduced {d['reproduced']!r}"
        )


def _same(a, b) -> bool:
    return (
        (a is None and b is None)
        or a == b
        or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    )


def reproduce(uri: str, trial_id: str, options=None) -> Reproduction:
    spec = stored_spec(uri, options)
    trials = {t["trial_id"]: t for t in load_trials(uri, options=options).to_pylist()}
    if trial_id not in trials:
        known = ", ".join(sorted(trials)[:5]) + (" ..." if len(trials) > 5 else "")
        raise RunError(f"{uri} has no trial {trial_id!r} (it has: {known})")
    trial = trials[trial_id]
    rows = sorted(
        (r for r in load_results(uri, options=options).to_pylist() if r["trial_id"] == trial_id),
        key=lambda r: r["iteration"],
    )
    if not rows:
        raise RunError(f"{trial_id} reported no epoch: nothing to compare")
    with DriverSession() as session:
        the_plan = plan(spec, uri)
        # the spec's max_epochs (a schedule may depend on it), stopped where the trial was stopped
        trial_plan, iterations = the_plan.trial_plan, rows[-1]["iteration"]
        # the rerun's checkpoints are thrown away
        with tempfile.TemporaryDirectory(prefix="hpo-reproduce-") as scratch:
            try:
                reproduced = the_plan.launcher.reproduce(
                    session,
                    config_of(trial),
                    int(trial["trial_seed"]),
                    trial_plan,
                    trial_id,
                    scratch,
                    iterations,
                )
            except (RunError, SpecError):
                raise
            except Exception as error:
                raise WorkloadCodeFailed.logged(f"reproduce {trial_id}", error) from None
            checkpoint = _compare_checkpoints(
                TrialCheckpoints(
                    open_store(uri, options or spec.storage_options.s3()), trial_id, keep=1, mode="min"
                ),
                TrialCheckpoints(LocalStore(scratch), trial_id, keep=1, mode="min"),
                rows[-1]["iteration"],
            )
    metrics = [m for m in the_plan.schema.metrics if m in rows[0]]
    result = Reproduction(trial_id, len(rows), True, metrics=metrics, checkpoint=checkpoint)
    again = {m[ITERATION_KEY]: m for m in reproduced}
    for row in rows:
        for metric in metrics:
            value = again.get(row["iteration"], {}).get(metric)
            if not _same(row[metric], value):
                result.identical = False
                result.first_difference = {
                    "iteration": row["iteration"],
                    "metric": metric,
                    "recorded": row[metric],
                    "reproduced": value,
                }
                return result
    result.identical = not checkpoint.startswith("differs")
    return result


def _compare_checkpoints(stored: TrialCheckpoints, rerun: TrialCheckpoints, iteration: int) -> str:
    """The stored trial's latest checkpoint against the rerun's, when both are of `iteration`."""
    try:
        a, b = stored.load_latest(), rerun.load_latest()
    except Exception as error:  # the comparison of metrics stands on its own
        return f"not compared ({type(error).__name__}: {error})"
    if a is None or b is None:
        return "not compared (no checkpoint " + ("stored)" if a is None else "written by the rerun)")
    if a.get("iteration") != iteration or b.get("iteration") != iteration:
        return f"not compared (the stored one is of epoch {a.get('iteration')}, not {iteration})"
    where = _first_difference(a[CHECKPOINT_KEY], b[CHECKPOINT_KEY], "")
    return "identical" if where is None else f"differs at {where or 'its top level'}"


def _first_difference(a, b, path: str) -> str | None:
    """The key path of the first leaf that differs (tensors bit for bit), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{path} (keys)"
        return next((d for k in a if (d := _first_difference(a[k], b[k], f"{path}/{k}")) is not None), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length)"
        pairs = enumerate(zip(a, b, strict=True))
        return next(
            (d for i, (x, y) in pairs if (d := _first_difference(x, y, f"{path}/{i}")) is not None), None
        )
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return None if same and a.shape == b.shape and torch.equal(a, b) else path
    return None if _same(a, b) else path
