"""Every name under a run's results_uri, in one place: `<storage>/<name>/<run id>/...`.

```
spec.yaml                 the resolved spec (SPEC_FILE)
run.json                  name, run id, status, time, rows and trials when done (RUN_FILE)
trials.parquet            one row per trial (TRIALS_FILE)
results/                  part-*.parquet, compact-*.parquet, data-*.parquet and _manifest.json
checkpoints/<trial_id>/   epoch-NNNN.pt and index.json
tune/                     Ray Tune's experiment state (mirrored to a remote store at the end)
train/                    Ray Train's controller state (local stores; a remote store's stays in the spool)
sanity.parquet  ensemble.parquet
```

Trials are named by creation order, `trial_0000`, `trial_0001`, ...; the reporting key ITERATION_KEY counts a
trial's epochs (1-based) in everything a trial reports.
"""

from __future__ import annotations

import secrets
import time

from orchestrator.storage import join_uri, open_store

SPEC_FILE = "spec.yaml"
RUN_FILE = "run.json"
LEASE_FILE = "lease.json"  # the driver that holds a live run (execution/lease.py)
TRIALS_FILE = "trials.parquet"
RESULTS_DIR = "results"
MANIFEST = f"{RESULTS_DIR}/_manifest.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_INDEX = "index.json"
TUNE_DIR = "tune"  # Ray Tune's experiment state
TRAIN_DIR = "train"  # Ray Train controller state of multi-worker trials
SANITY_FILE = "sanity.parquet"
ENSEMBLE_FILE = "ensemble.parquet"
SANITY_RUN_PREFIX = "sanity-"  # `hpo sanity` writes under <storage>/<name>/sanity-<run id>/

TRIAL_PREFIX = "trial_"
ITERATION_KEY = "epoch"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def results_uri_for(storage: str, name: str, run_id: str) -> str:
    """`<storage>/<name>/<run id>`, with storage normalised as its store states it (an absolute path)."""
    return join_uri(open_store(storage).uri, name, run_id)


def run_id_of(results_uri: str) -> str:
    return results_uri.rstrip("/").rsplit("/", 1)[-1]


def trial_id(index: int) -> str:
    return f"{TRIAL_PREFIX}{index:04d}"


def trial_index(name: str) -> int:
    return int(name.removeprefix(TRIAL_PREFIX))


def checkpoint_dir(trial: str) -> str:
    return f"{CHECKPOINT_DIR}/{trial}"


def checkpoint_file(trial: str, epoch: int) -> str:
    return f"{checkpoint_dir(trial)}/epoch-{epoch:04d}.pt"


def checkpoint_index(trial: str) -> str:
    return f"{checkpoint_dir(trial)}/{CHECKPOINT_INDEX}"


def adopted_checkpoint_file(trial: str, epoch: int) -> str:
    """Where PBT's exploit puts the donor's checkpoint of `epoch` for `trial` to continue from (copied by the
    driver while every trial waits; the trial makes it its own at its next start)."""
    return f"{checkpoint_dir(trial)}/adopted-{epoch:04d}.pt"
