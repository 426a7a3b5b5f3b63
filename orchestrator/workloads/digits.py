"""Built-in `digits-mlp`: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no download."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.workloads.base import Splits, Workload

if TYPE_CHECKING:
    import numpy as np

# The split is fixed (its own seed, independent of any trial seed) so every trial sees the same data.
SPLIT_SEED = 1234
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
NUM_CLASSES = 10


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, exactly as `sklearn.datasets.load_digits(return_X_y=True)` gives them, read
    from the CSV the package ships. Importing scikit-learn's datasets takes ~2 s, and every trial process would
    pay it before its first epoch; finding the file does not import scikit-learn at all."""
    import numpy as np  # late: `hpo validate` imports every built-in workload, and numpy costs it ~70 ms

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the digits-mlp workload needs scikit-learn (pip install scikit-learn)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, ...]:
    import numpy as np  # late: `hpo validate` imports every built-in workload, and numpy costs it ~70 ms

    x, y = _load_digits()
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
    import torch  # heavy: torch, only once data is loaded (validating a spec resolves the workload)

    xt, yt, xv, yv, xs, ys = (torch.from_numpy(a) for a in _digits_arrays())
    return Splits(train=(xt, yt), val=(xv, yv), test=(xs, ys))


def build_mlp(config: Mapping[str, Any]):
    from torch import nn  # heavy: torch, only once a model is built

    hidden, depth, dropout = int(config["hidden"]), int(config["depth"]), float(config["dropout"])
    layers = []
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def digits_mlp() -> Workload:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), an MLP over `hidden`, `depth`, `dropout`"""
    return Workload(
        name="digits-mlp",
        build_model=build_mlp,
        load_data=load_digits_splits,
        task="classification",
        hyperparameters={"hidden": 64, "depth": 2, "dropout": 0.0},
    )
