"""Seeding and deterministic execution, in one place.

What is guaranteed: a trial given the same seed, config, workload, worker count, thread count, library versions
and hardware type produces bit-identical per-epoch metrics (CPU measured in the tests; on GPU with the settings
below, for ops that have deterministic CUDA kernels: torch raises rather than run one that does not).
What is not: identical numbers across different hardware, library versions, thread counts or worker counts
(floating-point reductions change order); whole-job identity when the searcher or scheduler reacts to the
order in which concurrent trials finish (hyperopt, ASHA with max_concurrent > 1); see the README.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from orchestrator.train.seeds import derive_seed, trial_seed

__all__ = ["derive_seed", "trial_seed", "seed_everything", "configure_determinism", "epoch_permutation"]

# cuBLAS needs a fixed workspace to pick deterministic kernels; it must be set before CUDA initialises.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def configure_determinism(*, use_gpu: bool, threads: int) -> None:
    """Make torch pick deterministic algorithms and a fixed thread count (reduction order depends on it)."""
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True)
    # Filling uninitialised memory costs time and buys nothing: our ops never read uninitialised tensors.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if use_gpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not reproducible
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        # NCCL: a fixed ring algorithm and protocol keep all-reduce summation order the same between runs.
        os.environ.setdefault("NCCL_ALGO", "Ring")
        os.environ.setdefault("NCCL_PROTO", "Simple")


def epoch_permutation(seed: int, epoch: int, n: int):
    """The order of the n training examples in `epoch`: a function of (trial seed, epoch) only."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x0DA7A))
    return torch.randperm(n, generator=generator)
