"""`synthetic`: benchmark functions with known optima that cost no training (for bench/search_efficiency.py).

Hyperparameters x1..x6 in [0, 1] are mapped onto the function's domain: `function: branin` uses x1, x2
(global minimum 0.397887 at three points), `function: hartmann6` uses x1..x6 (global minimum -3.32237).
`train_loss` is f(x) itself (search it to measure regret against the known optimum); `val_loss` at epoch e is
a learning curve, f(x) + gap(x) / e: every trial converges to f(x), and trials that end better tend to, but
do not always, look better early (gap grows with the distance from the domain's centre), so early stopping
has something to get right and something to get wrong.

`function: zdt1` is two objectives over x1..x6 (Zitzler, Deb and Thiele's ZDT1): `train_loss` is f1 = x1 and
`val_loss` at epoch e is f2 x (1 + 1 / e), where f2 = g (1 - sqrt(x1 / g)) and g = 1 + 9 mean(x2..x6). Its
Pareto front is f2 = 1 - sqrt(f1) (x2..x6 = 0); search [train_loss, val_loss] to measure hypervolume.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.workloads.base import Workload

if TYPE_CHECKING:
    import numpy as np

OPTIMA = {"branin": 0.397887, "hartmann6": -3.32237}


@functools.cache
def _hartmann6_constants():
    import numpy as np  # late: `hpo validate` imports every built-in workload, and numpy costs it ~70 ms

    alpha = np.array([1.0, 1.2, 3.0, 3.2])
    a = np.array(
        [
            [10, 3, 17, 3.5, 1.7, 8],
            [0.05, 10, 17, 0.1, 8, 14],
            [3, 3.5, 1.7, 10, 17, 8],
            [17, 8, 0.05, 10, 0.1, 14],
        ]
    )
    p = 1e-4 * np.array(
        [
            [1312, 1696, 5569, 124, 8283, 5886],
            [2329, 4135, 8307, 3736, 1004, 9991],
            [2348, 1451, 3522, 2883, 3047, 6650],
            [4047, 8828, 8732, 5743, 1091, 381],
        ]
    )
    return alpha, a, p


def branin(u1: float, u2: float) -> float:
    x1, x2 = 15 * u1 - 5, 15 * u2  # x1 in [-5, 10], x2 in [0, 15]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann6(u: np.ndarray) -> float:
    import numpy as np  # late, as above

    alpha, a, p = _hartmann6_constants()
    return float(-np.sum(alpha * np.exp(-np.sum(a * (u - p) ** 2, axis=1))))


def value(function: str, u: np.ndarray) -> float:
    if function == "branin":
        return branin(u[0], u[1])
    if function == "hartmann6":
        return hartmann6(u)
    raise ValueError(f"function {function!r}: use branin, hartmann6 or zdt1")


def zdt1(u: np.ndarray) -> tuple[float, float]:
    f1 = float(u[0])
    g = 1.0 + 9.0 * float(u[1:].mean())
    return f1, g * (1.0 - math.sqrt(f1 / g))


def objective(config: Mapping[str, Any], epoch: int) -> dict[str, float]:
    """The metrics of `epoch` (1-based) for this config."""
    import numpy as np  # late, as above

    # an x the config lacks (not in a conditional space's branch taken) sits at the middle, as its default does
    u = np.array([float(config.get(f"x{i}", 0.5)) for i in range(1, 7)])
    if config["function"] == "zdt1":
        f1, f2 = zdt1(u)
        return {"train_loss": f1, "val_loss": f2 * (1.0 + 1.0 / epoch)}
    f = value(config["function"], u)
    gap = 1.0 + 4.0 * float(np.abs(u - 0.5).mean())
    return {"train_loss": f, "val_loss": f + gap / epoch}


def train(ctx) -> None:
    """No model: each report is the function's learning curve at that epoch."""
    for epoch in range(1, ctx.max_epochs + 1):
        ctx.report(objective(ctx.config, epoch))


def synthetic() -> Workload:
    """benchmark functions with known optima (Branin, Hartmann6 over `x1`..`x6`); trains nothing"""
    return Workload(
        name="synthetic",
        train=train,
        metrics={"train_loss": "min", "val_loss": "min"},
        hyperparameters={"function": "branin", **{f"x{i}": 0.5 for i in range(1, 7)}},
    )
