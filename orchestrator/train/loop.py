"""The standard training loop, on one worker or as one rank of DDP.

It owns what a workload does not: optimizer, batching, data order, evaluation, metrics and checkpoint state.
Data order comes from (trial seed, epoch), so a restored trial continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.results.layout import ITERATION_KEY
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.determinism import (
    configure_determinism,
    derive_seed,
    epoch_permutation,
    seed_everything,
)
from orchestrator.train.plan import TrialPlan
from orchestrator.workloads import Workload, resolve_workload

EVAL_BATCH = 4096


class Reporter(Protocol):
    """How a loop hands metrics to Ray: tune.report in-process, ray.train.report under DDP."""

    def report(self, metrics: dict) -> None: ...


@functools.lru_cache(maxsize=4)
def _workload(name: str) -> Workload:
    return resolve_workload(name)


def make_optimizer(hp: Mapping[str, Any], params) -> torch.optim.Optimizer:
    lr, wd = float(hp["lr"]), float(hp["weight_decay"])
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(hp["momentum"]), weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def task_loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if task == "classification" else F.mse_loss(out.squeeze(-1), y)


@torch.no_grad()
def evaluate(model, task: str, x: torch.Tensor, y: torch.Tensor, device) -> dict[str, float]:
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH].to(device), y[start : start + EVAL_BATCH].to(device)
        out = model(xb)
        total += float(task_loss(task, out, yb)) * len(xb)
        if task == "classification":
            correct += int((out.argmax(dim=-1) == yb).sum())
    metrics = {"loss": total / len(x)}
    if task == "classification":
        metrics["accuracy"] = correct / len(x)
    return metrics


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _train_epoch(model, optimizer, task, x, y, order, batch, device, world: int) -> float:
    model.train()
    total = torch.zeros(2, dtype=torch.float64)  # (sum of losses, examples) on this rank
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        xb, yb = x[idx].to(device), y[idx].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = task_loss(task, model(xb), yb)
        loss.backward()
        optimizer.step()
        total += torch.tensor([float(loss.detach()) * len(idx), len(idx)], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


def run_training(
    hp: Mapping[str, Any],
    seed: int,
    plan: TrialPlan,
    reporter: Reporter,
    checkpoints: TrialCheckpoints,
    *,
    restore: bool = True,
    rank: int = 0,
    world: int = 1,
    device: str = "cpu",
) -> None:
    """Train for plan.max_epochs (with `restore`, only the epochs after the latest checkpoint), reporting every
    epoch. Rank 0 writes a checkpoint every epoch; with `restore` every rank starts from the latest one."""
    configure_determinism(use_gpu=plan.use_gpu, threads=max(1, math.floor(plan.cpus_per_worker)))
    workload = _workload(plan.workload)
    if workload.objective is not None:  # a benchmark function: nothing to train or checkpoint
        for epoch in range(1, plan.max_epochs + 1):
            reporter.report(
                {
                    ITERATION_KEY: epoch,
                    **workload.objective(hp, epoch),
                    "trial_seed": seed,
                    "epoch_time_s": 0.0,
                }
            )
        return
    seed_everything(seed)  # the same on every rank: identical initial weights
    splits = workload.load_data(hp)
    (x_train, y_train), (x_val, y_val) = splits.train, splits.val
    model = workload.build_model(hp).to(device)
    optimizer = make_optimizer(hp, model.parameters())
    seed_everything(derive_seed(seed, rank, 0xD0))  # per-rank stream for dropout and friends
    start = 1
    if not restore:
        checkpoints.start_fresh()
    state = checkpoints.load_latest(map_location=device) if restore else None
    if state is not None:
        _check_same_trial(state, hp, seed, checkpoints)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        start = state["epoch"] + 1
        # Report every epoch up to the checkpoint again: the run may have died before some of those rows were
        # reported or written (a crash between checkpoint and report, a driver killed before its flush). The
        # driver keeps the first row it sees for each epoch, so nothing is doubled.
        index = checkpoints.index()
        links = {
            "checkpoint": checkpoints.uri(index["latest"]),
            "best_checkpoint": checkpoints.uri(index["best"]),
        }
        history = state.get("history", [])
        for past in history:
            reporter.report({**past, **(links if past is history[-1] else {})})
    history = list(state.get("history", [])) if state is not None else []
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None
        )
    per_rank = max(1, int(hp["batch_size"]) // world)
    usable = (len(x_train) // world) * world  # equal shards: every rank runs the same number of steps
    for epoch in range(start, plan.max_epochs + 1):
        began = time.perf_counter()
        order = epoch_permutation(seed, epoch, len(x_train))[:usable][rank::world]
        train_loss = _train_epoch(
            net, optimizer, workload.task, x_train, y_train, order, per_rank, device, world
        )
        val = evaluate(model, workload.task, x_val, y_val, device)
        metrics = {
            ITERATION_KEY: epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "trial_seed": seed,
        }
        if "accuracy" in val:
            metrics["val_accuracy"] = val["accuracy"]
        metrics["epoch_time_s"] = time.perf_counter() - began
        rngs = _gather_rng(world)
        history.append(dict(metrics))
        if rank == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "rng": rngs,
                "config": dict(hp),
                "seed": seed,
                "history": history,
            }
            index = checkpoints.save(epoch, state, metrics.get(plan.metric))
            metrics["checkpoint"] = checkpoints.uri(index["latest"])
            metrics["best_checkpoint"] = checkpoints.uri(index["best"])
        reporter.report(metrics)


def _check_same_trial(state: dict, hp: Mapping[str, Any], seed: int, checkpoints: TrialCheckpoints) -> None:
    """A checkpoint continues only the trial that wrote it: same hyperparameters, same seed. Anything else
    (a resumed search proposing another config for this trial's name) would silently mix two trials."""
    if state.get("seed") == seed and state.get("config") == dict(hp):
        return
    stored = state.get("config") or {}
    differ = sorted(k for k in set(stored) | set(hp) if stored.get(k) != hp.get(k)) or ["seed"]
    raise RuntimeError(
        f"{checkpoints.trial_id}: its checkpoint was written with {differ[0]}="
        f"{stored.get(differ[0], state.get('seed'))!r}, this attempt has "
        f"{hp.get(differ[0], seed)!r}; refusing to continue another trial's training"
    )


def _gather_rng(world: int) -> list:
    """Every rank's RNG state, gathered to each rank (so rank 0's checkpoint can restore them all)."""
    state = _rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    torch.distributed.all_gather_object(states, state)
    return states
