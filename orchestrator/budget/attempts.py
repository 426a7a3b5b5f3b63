"""Which attempt of a trial is running: the driver counts retries, the trial reads the count at start.

Tune restarts a failed function trainable without telling it that it is a retry. A trial that restored on every
start would have to read the store before its first epoch, and while the store is down it could not tell a
fresh trial from a restarted one. So the driver records each retry in Ray's GCS key-value store (it lives as
long as the cluster, outlives any node, and is written before Tune restarts the trial), and a trial restores
from its checkpoint only when it is a retry. Attempt 0 is the first run.
"""

from __future__ import annotations

import json

from orchestrator.ray_support.ray_compat import kv_del, kv_get, kv_put, kv_ready

_NAMESPACE = "hpo-attempts"


def _key(results_uri: str, trial: str) -> bytes:
    return f"{results_uri}\n{trial}".encode()


def record_retry(results_uri: str, trial: str, attempt: int) -> None:
    kv_put(_key(results_uri, trial), str(attempt).encode(), namespace=_NAMESPACE)


def current_attempt(results_uri: str, trial: str) -> int:
    if not kv_ready():
        return 0  # not inside Ray (direct calls in tests): always a first attempt
    value = kv_get(_key(results_uri, trial), namespace=_NAMESPACE)
    return int(value) if value else 0


def forget(results_uri: str, trials: list[str]) -> None:
    """Drop a finished run's keys (a long-lived cluster should not collect them)."""
    for trial in trials:
        kv_del(_key(results_uri, trial), namespace=_NAMESPACE)
        kv_del(_key(results_uri, trial), namespace=_CONTINUE_NAMESPACE)


# PBT (tuning/pbt.py) pauses every trial at each step and starts it again: the driver records here, before it
# does, the epoch the trial continues from and whose checkpoint that is (its own, or a donor's it exploits).
_CONTINUE_NAMESPACE = "hpo-continue"


def record_continuation(results_uri: str, trial: str, epoch: int, donor: str | None) -> None:
    value = json.dumps({"epoch": epoch, "donor": donor}).encode()
    kv_put(_key(results_uri, trial), value, namespace=_CONTINUE_NAMESPACE)


def continuation(results_uri: str, trial: str) -> tuple[int, str | None] | None:
    """(epoch, donor or None) if this start of `trial` continues a PBT step, else None."""
    if not kv_ready():
        return None
    value = kv_get(_key(results_uri, trial), namespace=_CONTINUE_NAMESPACE)
    if not value:
        return None
    data = json.loads(value)
    return int(data["epoch"]), data["donor"]


# The budget (budget/ledger.py): once it is spent the driver says so here, and a trial Tune had already created
# but not yet started ends at its start instead of training.
_BUDGET_NAMESPACE = "hpo-budget"
BUDGET_SPENT = "the job's budget was spent before this trial started"


def close_budget(results_uri: str) -> None:
    kv_put(results_uri.encode(), b"spent", namespace=_BUDGET_NAMESPACE)


def budget_closed(results_uri: str) -> bool:
    return kv_ready() and kv_get(results_uri.encode(), namespace=_BUDGET_NAMESPACE) is not None


def forget_budget(results_uri: str) -> None:
    kv_del(results_uri.encode(), namespace=_BUDGET_NAMESPACE)
