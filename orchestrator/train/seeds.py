"""Seeds from keys: a trial's seed from (job seed, trial index), and every other seed hpo derives. NumPy only, so
the driver computes seeds without importing torch."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys (job seed, trial index, epoch, rank...), stable across platforms."""
    return (
        int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint32)[0]) & 0x7FFFFFFF
    )


def trial_seed(job_seed: int, index: int) -> int:
    """The seed of the job's trial `index` (its creation order): the same spec gives every trial the same seed."""
    return derive_seed(job_seed, index)
