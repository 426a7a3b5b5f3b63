"""Built-in `digits-mlp`: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no download."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.workloads import Splits, Workload

# The split is fixed (its own seed, independent of any trial seed) so every trial sees the same data.
SPLIT_SEED = 1234
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    n_val, n_test = int(len(x) * VAL_FRACTION), int(len(x) * TEST_FRACTION)
    n_train = len(x) - n_val - n_test
    # Standardize with training statistics only, so validation and test stay unseen.
    mean, std = x[:n_train].mean(axis=0), x[:n_train].std(axis=0) + 1e-6
    x = (x - mean) / std
    return (
        x[:n_train],
        y[:n_train],
        x[n_train : n_train + n_val],
        y[n_train : n_train + n_val],
        x[n_train + n_val :],
        y[n_train + n_val :],
    )


def load_digits_splits(config: Mapping[str, Any]) -> Splits:
    xt, yt, xv, yv, xs, ys = (torch.from_numpy(a) for a in _digits_arrays())
    return Splits(train=(xt, yt), val=(xv, yv), test=(xs, ys))


def build_mlp(config: Mapping[str, Any]) -> nn.Module:
    hidden, depth, dropout = int(config["hidden"]), int(config["depth"]), float(config["dropout"])
    layers: list[nn.Module] = []
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def digits_mlp() -> Workload:
    return Workload(
        name="digits-mlp",
        build_model=build_mlp,
        load_data=load_digits_splits,
        task="classification",
        hyperparameters={"hidden": 64, "depth": 2, "dropout": 0.0},
    )
