"""What only the tests ask of Ray's internals: the cluster launcher's validator and fake provider (for the shipped
cluster configs), what Tune's HyperOpt searcher recorded, what Tune copies into trial actors, and the environment
a `ray start` needs for FAST_CONNECT. The product reaches Ray's internals only through
orchestrator/ray_support/ray_compat/ (tests/test_fence.py); these are checked against the pinned Ray in
tests/test_ray_compat.py, beside it."""

from __future__ import annotations

from orchestrator.ray_support.ray_compat import FAST_CONNECT


def fast_connect_env() -> dict[str, str]:
    """ray_compat.FAST_CONNECT as the environment of a `ray start` (Ray's C++ processes read RAY_<setting>): what
    the test clusters' heads get, and what the Dockerfile sets."""
    return {f"RAY_{name}": str(value) for name, value in FAST_CONNECT.items()}


def validate_cluster_config(config: dict, *, prepare: bool = True) -> dict:
    """Ray 2.60's autoscaler validator (`ray.autoscaler._private.util`); `prepare` fills the provider's
    defaults first (it needs an example config that only some providers ship). Returns the checked config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    if prepare:
        config = prepare_config(config)
    validate_config(config)
    return config


def fake_head_node_id() -> str:
    """Ray 2.60's fake multi-node provider knows the head by this node id."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    return FAKE_HEAD_NODE_ID


def hyperopt_record(searcher, index: int) -> tuple[dict, dict]:
    """Ray 2.60's HyperOptSearch: what TPE recorded for its index-th proposal (`_hpopt_trials`): the values it
    learns from (a choice by its index) and the result."""
    trial = searcher._hpopt_trials.trials[index]
    return {k: v[0] for k, v in trial["misc"]["vals"].items()}, trial["result"]


def propagated_env() -> set[str]:
    """Ray Tune 2.60: the variables it copies into trial actors now (a copy)."""
    from ray.tune.execution import class_cache

    return set(class_cache.ENV_VARS_TO_PROPAGATE)
