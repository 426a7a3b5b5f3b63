"""Ray Train V2's internals: its worker's logger, its controller's knobs and how it finds its cluster."""

from __future__ import annotations

import contextlib
import logging
import os

import ray

from orchestrator.ray_support.ray_compat.patching import patched


def quiet_train_worker() -> None:
    """Ray Train 2.60 names the logger of its per-report INFO lines by file path, so LoggingConfig(log_level)
    misses it: set it to WARNING (run on each Train worker)."""
    from ray.train.v2._internal.execution import (
        context as train_context,
    )  # here, not at the top: a move breaks only this

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


# Ray Train 2.60's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s). A worker
# holds one report until the next poll, so a trial reporting faster than that waits, and the end of fit() is
# seen up to two polls late. A poll is one small task per worker: 0.25 s costs little and saved ~4 s per DDP
# trial here. Read from the environment of the process calling fit(), which passes it on to its workers.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


@contextlib.contextmanager
def train_knows_its_cluster():
    """Around a TorchTrainer.fit(): its controller and the actors it starts find their own cluster by address.
    Ray Train 2.60's placement-group cleaner asks the State API whether the controller lives, without an
    address; with two Ray instances on one host that lookup fails ("Found multiple active Ray instances") or,
    through ray_current_cluster, asks the other cluster, and the worker group never starts or is removed. So
    RAY_ADDRESS is set to this process's cluster and added to what Ray Train copies into its controller
    (`ENV_VARS_TO_PROPAGATE`, a set of our own meanwhile), whose child actors inherit it. Both are put
    back on the way out."""
    from ray.train.v2._internal import constants  # here, not at the top: a move breaks only this

    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:
        with patched(constants, ENV_VARS_TO_PROPAGATE=constants.ENV_VARS_TO_PROPAGATE | {"RAY_ADDRESS"}):
            yield
    finally:
        if before is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = before


TRAIN_CONTROLLER_CLASS = "TrainController"  # Ray Train 2.60's controller actor, one per TorchTrainer.fit()
