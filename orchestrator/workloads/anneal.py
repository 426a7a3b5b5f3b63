"""`anneal`: a noisy quantity that a step size drives to its target, whose best step size falls during training;
it trains no network, so a population-based search of it costs almost nothing (bench/search_efficiency.py).

Each epoch takes STEPS steps of x <- x + lr (1 - x) + lr * noise * N(0, 1), from x = 0, with the normal draws
seeded by (trial seed, epoch). The error 1 - x shrinks by (1 - lr) a step, and the noise holds it at a
floor of about noise^2 lr / (2 - lr): a large lr gets close fast and then jitters, a small lr settles lower
but slowly. So no fixed lr is best throughout, and a schedule that starts large and decays (what PBT can learn)
beats every fixed one. `loss` is the mean of (1 - x)^2 over the epoch's steps; `x` (at the epoch's end) is
reported too, and the checkpoint holds it: a trial continues exactly from it.
"""

from __future__ import annotations

import random

from orchestrator.workloads.base import Workload

STEPS = 50  # updates per epoch


def advance(x: float, lr: float, noise: float, seed: int, epoch: int) -> tuple[float, float]:
    """One epoch's updates of x, and the mean of (1 - x)^2 over them (a function of its arguments only: a
    continued trial repeats them exactly)."""
    draws = random.Random(f"anneal-{seed}-{epoch}")
    total = 0.0
    for _ in range(STEPS):
        x = x + lr * (1.0 - x) + lr * noise * draws.gauss(0.0, 1.0)
        total += (1.0 - x) ** 2
    return x, total / STEPS


def train(ctx) -> None:
    """The epochs from the checkpoint's x (or from 0), reporting the loss and x, and keeping x."""
    cfg = ctx.config
    state = ctx.get_checkpoint()
    x = state["x"] if state is not None else 0.0
    for epoch in range(ctx.iteration + 1, ctx.max_epochs + 1):
        x, loss = advance(x, float(cfg["lr"]), float(cfg["noise"]), ctx.seed, epoch)
        ctx.report({"loss": loss, "x": x}, checkpoint={"x": x})


def anneal() -> Workload:
    """a noisy quantity driven to its target by step size lr, whose best lr falls as training goes on (PBT)"""
    return Workload(
        name="anneal",
        train=train,
        metrics={"loss": "min", "x": "max"},
        hyperparameters={"lr": 0.1, "noise": 0.5},
    )
