"""Ensembles of a finished run's best trials (`hpo ensemble`, `kind: ensemble` specs).

Each member is a trial's best checkpoint (by the run's search metric). Members predict the workload's
validation and test splits as Ray tasks, through the workload's `predict(state, split)` when it gives one, else
its `build_model` on its `load_data` splits; the ensemble averages class probabilities (classification) or
predictions (regression). `topk` averages the K best trials by their validation metric. `greedy` is Caruana
et al. (2004) forward selection with replacement: starting from nothing, K times add whichever library model
lowers the ensemble's validation loss most, then keep the best prefix; the library is the run's best
max(3K, 10) trials. Test metrics never influence any choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import torch

from orchestrator.errors import RunError, did_you_mean, not_allowed
from orchestrator.ray_support.driver import DriverSession
from orchestrator.results import load_trials
from orchestrator.results.layout import ENSEMBLE_FILE
from orchestrator.results.ops import stored_spec
from orchestrator.results.schema import scoreable
from orchestrator.results.writer import parquet_bytes
from orchestrator.spec import DEFAULT_ENSEMBLE_METHOD
from orchestrator.storage import open_store
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import CHECKPOINT_KEY
from orchestrator.train.determinism import configure_determinism
from orchestrator.train.exceptions import UnsafeCheckpoint
from orchestrator.workloads import resolve_workload
from orchestrator.workloads.base import CheckpointState


@dataclass
class EnsembleResult:
    results_uri: str
    method: str
    task: str
    ensemble: dict  # val_/test_ loss (and accuracy for classifiers)
    best_single: dict  # the member with the best validation metric: trial_id and its metrics
    members: list[dict] = field(default_factory=list)  # trial_id, weight, metrics

    def to_json(self) -> dict:
        return {
            "results_uri": self.results_uri,
            "method": self.method,
            "ensemble": self.ensemble,
            "best_single": self.best_single,
            "members": self.members,
        }


def _scores(task: str, preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for split in ("val", "test"):
        p, y = preds[split], labels[split]
        if task == "classification":
            out[f"{split}_loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
            out[f"{split}_accuracy"] = float(np.mean(p.argmax(axis=1) == y))
        else:
            out[f"{split}_loss"] = float(np.mean((p - y) ** 2))
    return out


def _predict(
    results_uri: str,
    storage_options: dict,
    workload_name: str,
    trial_id: str,
    mode: str,
    latest: bool = False,
):
    """One member's validation and test predictions (probabilities for classifiers), from its best checkpoint
    (`latest`: its last one, the trial's point when ranked by another objective): through the workload's own
    `predict`, or its `build_model` run on its `load_data` splits."""
    configure_determinism(use_gpu=False, threads=1)
    workload = resolve_workload(workload_name)
    checkpoints = TrialCheckpoints(open_store(results_uri, storage_options), trial_id, keep=1, mode=mode)
    state = checkpoints.load_latest() if latest else checkpoints.load_best()
    if state is None:
        raise RunError(f"{trial_id} has no checkpoint under {results_uri}")
    preds, labels = {}, {}
    if workload.predict is not None:
        checkpoint = CheckpointState(state[CHECKPOINT_KEY], config=state["config"], trial_id=trial_id)
        for split in ("val", "test"):
            with torch.no_grad():
                outputs, targets = workload.predict(checkpoint, split)
            preds[split], labels[split] = _checked(workload, split, outputs, targets)
        return preds, labels, workload.task
    model = workload.build_model(state["config"])
    model.load_state_dict(state[CHECKPOINT_KEY]["model"])
    model.eval()
    splits = workload.load_data(state["config"])
    with torch.no_grad():
        for split, (x, y) in (("val", splits.val), ("test", splits.test)):
            out = model(x)
            preds[split] = (
                torch.softmax(out.double(), dim=-1)
                if workload.task == "classification"
                else out.double().squeeze(-1)
            ).numpy()
            labels[split] = y.numpy()
    return preds, labels, workload.task


def _checked(workload, split: str, outputs, targets) -> tuple[np.ndarray, np.ndarray]:
    """`predict`'s (outputs, targets) as arrays, refused with the reason when they cannot be ensembled."""

    def array(value, what):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double()
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise RunError(
                f"workload {workload.name}: predict(state, {split!r}) gave {what} of type "
                f"{type(value).__name__}; give a tensor or an array"
            ) from None

    p, y = array(outputs, "outputs"), array(targets, "targets")
    where = f"workload {workload.name}: predict(state, {split!r})"
    if workload.task == "classification":
        if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
            raise RunError(
                f"{where} gave outputs of shape {p.shape} and targets of shape {y.shape}; a classifier gives "
                "(examples, classes) probabilities and (examples,) labels"
            )
        if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
            raise RunError(
                f"{where}: outputs are not class probabilities (rows must sum to 1: apply softmax)"
            )
        if not np.array_equal(y, np.round(y)) or y.min() < 0 or y.max() >= p.shape[1]:
            raise RunError(f"{where}: targets must be class indices from 0 to {p.shape[1] - 1}")
        return p, y.astype(np.int64)
    p = p.reshape(len(p), -1)[:, 0] if p.ndim > 1 and p.shape[-1] == 1 else p
    if p.shape != y.shape:
        raise RunError(f"{where} gave outputs of shape {p.shape} but targets of shape {y.shape}")
    return p, y


def _predict_all(spec, results_uri: str, trial_ids: list[str], address: str | None, latest: bool = False):
    with DriverSession() as session:
        session.start_ray(address)
        task = ray.remote(num_cpus=1)(_predict)
        refs = [
            task.remote(
                results_uri, spec.storage_options.s3(), spec.workload, t, spec.search.primary.mode, latest
            )
            for t in trial_ids
        ]
        try:
            return dict(zip(trial_ids, ray.get(refs), strict=True))
        except UnsafeCheckpoint as error:  # Ray's error from the task is one too; its last line is ours
            line = str(error).strip().splitlines()[-1]
            raise RunError(line.split(f"{UnsafeCheckpoint.__name__}: ", 1)[-1]) from None


def _greedy(library: list[str], preds: dict, labels, task: str, size: int) -> dict[str, int]:
    """Caruana forward selection with replacement on validation loss; returns trial -> times chosen."""
    chosen: list[str] = []
    total = None
    best_loss, best_prefix = float("inf"), 0
    for step in range(1, size + 1):

        def loss_with(t, total=total, step=step):
            avg = {s: ((total[s] if total else 0) + preds[t][s]) / step for s in ("val", "test")}
            return _scores(task, avg, labels)["val_loss"]

        pick = min(library, key=lambda t: (loss_with(t), library.index(t)))
        chosen.append(pick)
        total = {s: (total[s] if total else 0) + preds[pick][s] for s in ("val", "test")}
        loss = _scores(task, {s: total[s] / step for s in total}, labels)["val_loss"]
        if loss < best_loss:
            best_loss, best_prefix = loss, step
    counts: dict[str, int] = {}
    for t in chosen[:best_prefix]:
        counts[t] = counts.get(t, 0) + 1
    return counts


@dataclass(frozen=True)
class _Selection:
    pool: Callable[[int], int]  # top_k -> how many of the run's best trials to predict with
    weights: Callable[..., dict[str, int]]  # (pool, predictions, labels, task, top_k) -> trial -> weight


# The ensemble methods a spec names (spec.ENSEMBLE_METHODS) and how each selects its members.
SELECTIONS = {
    "topk": _Selection(lambda k: k, lambda pool, preds, labels, task, k: {t: 1 for t in pool}),
    "greedy": _Selection(lambda k: max(3 * k, 10), _greedy),
}


def build_ensemble(
    results_uri: str,
    *,
    top_k: int = 3,
    method: str = DEFAULT_ENSEMBLE_METHOD,
    address: str | None = None,
    options=None,
    progress: Callable[[str], None] = lambda line: None,
    by: str | None = None,
) -> EnsembleResult:
    """Ensemble the best `top_k` trials of the finished run at `results_uri`; writes ensemble.parquet there.
    Ranked by the primary objective's best report, or with `by` another objective of the run, by its value at
    each trial's last report (feasible trials only). Predictions run as Ray tasks on the cluster at `address`,
    or on an embedded Ray."""
    if method not in SELECTIONS:
        raise RunError(not_allowed(method, SELECTIONS, "method "))
    if not 1 <= top_k <= 1000:
        raise RunError(f"top_k {top_k}: use a number from 1 to 1000")
    spec = stored_spec(results_uri, options)
    if (missing := resolve_workload(spec.workload).missing_for("ensemble")) is not None:
        raise RunError(missing)
    store = open_store(results_uri, options or spec.storage_options.s3())
    metric, mode = spec.search.primary.metric, spec.search.primary.mode
    latest = by is not None and by != metric
    if latest:  # another objective: each trial's point (its last report, and its last checkpoint)
        names = [o.metric for o in spec.search.objectives]
        if by not in names:
            raise RunError(
                f"metric {by!r}: not an objective of this run ({did_you_mean(by, names)}objectives: "
                f"{', '.join(names)})"
            )
        objective = spec.search.objectives[names.index(by)]
        finished = [
            t
            for t in load_trials(store).to_pylist()
            if t["checkpoint"] and scoreable(t[f"last_{by}"]) and t.get("feasible") is not False
        ]
        key = lambda t: (objective.as_minimized(t[f"last_{by}"]), t["trial_id"])  # noqa: E731
    else:
        finished = [
            t
            for t in load_trials(store).to_pylist()
            if t["best_checkpoint"] and t[f"best_{metric}"] is not None
        ]
        key = lambda t: (t[f"best_{metric}"] if mode == "min" else -t[f"best_{metric}"], t["trial_id"])  # noqa: E731
    if not finished:
        raise RunError(f"{results_uri}: no trial has a checkpoint and a {by or metric} to rank it by")
    finished.sort(key=key)
    selection = SELECTIONS[method]
    pool = [t["trial_id"] for t in finished[: selection.pool(top_k)]]
    progress(f"ensemble: predicting with {len(pool)} trial(s) as Ray tasks")
    predicted = _predict_all(spec, results_uri, pool, address, latest)
    labels, task = predicted[pool[0]][1], predicted[pool[0]][2]
    preds = {t: predicted[t][0] for t in pool}
    weights = selection.weights(pool, preds, labels, task, top_k)
    size = sum(weights.values())
    averaged = {s: sum(preds[t][s] * n for t, n in weights.items()) / size for s in ("val", "test")}
    members = [
        {"trial_id": t, "weight": weights.get(t, 0) / size, **_scores(task, preds[t], labels)}
        for t in pool
        if t in weights
    ]
    val_key = "val_accuracy" if metric == "val_accuracy" and task == "classification" else "val_loss"
    sign = -1 if val_key == "val_accuracy" else 1
    best = min(members, key=lambda m: (sign * m[val_key], m["trial_id"]))
    result = EnsembleResult(
        results_uri,
        method,
        task,
        _scores(task, averaged, labels),
        {k: v for k, v in best.items() if k != "weight"},
        members,
    )
    store.write_bytes(ENSEMBLE_FILE, parquet_bytes(_table(result)))
    return result


def _table(result: EnsembleResult) -> pa.Table:
    rows = [{"role": "ensemble", "trial_id": None, "weight": 1.0, **result.ensemble}]
    rows.append({"role": "best_single", "weight": None, **result.best_single})
    rows += [{"role": "member", **m} for m in result.members]
    metrics = [k for k in result.ensemble]
    schema = pa.schema(
        [pa.field("role", pa.string()), pa.field("trial_id", pa.string()), pa.field("weight", pa.float64())]
        + [pa.field(m, pa.float64()) for m in metrics],
        metadata={b"hpo.method": result.method.encode()},
    )
    return pa.Table.from_pylist(rows, schema=schema)
