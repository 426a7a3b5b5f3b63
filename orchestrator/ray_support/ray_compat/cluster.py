"""The cluster: its nodes and their types, the autoscaler's node types and config, accelerators, the head, a node's fate."""

from __future__ import annotations

import os
import re

import ray

from orchestrator.ray_support.ray_compat.core import session_dir
from orchestrator.results.summary import UNTYPED_NODE as _UNTYPED_NODE

ACCELERATOR_SLIVER = 0.001  # what Ray Train asks of a node's accelerator_type:<T> resource per worker


def accelerator_resource(accelerator_type: str) -> str:
    """The resource by which Ray marks nodes with `accelerator_type` GPUs (Ray 2.60: "accelerator_type:A100")."""
    # here, not at the top: a move breaks only this
    from ray._common.utils import RESOURCE_CONSTRAINT_PREFIX

    return f"{RESOURCE_CONSTRAINT_PREFIX}{accelerator_type}"


LOCAL_NODE_TYPE = _UNTYPED_NODE  # the type of an embedded node, or of one no autoscaler launched


NODE_GROUP_LABEL = "ray.io/node-group"  # KubeRay's worker group, set from RAY_NODE_TYPE_NAME


def live_nodes() -> list[dict]:
    """The alive nodes: {"id", "name" (its address), "resources" (totals), "type"}. The type is the autoscaler's
    node type: Ray 2.60 keeps it in the GCS node state (`ray_node_type_name`, from RAY_NODE_TYPE_NAME, which the
    fake provider and KubeRay set) or the ray.io/node-group label; a node with neither is LOCAL_NODE_TYPE."""
    types = _gcs_node_types()
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        labels = node.get("Labels") or {}
        node_type = labels.get(NODE_GROUP_LABEL) or types.get(node["NodeID"]) or LOCAL_NODE_TYPE
        nodes.append(
            {
                "id": node["NodeID"],
                "name": node.get("NodeManagerAddress", node["NodeID"][:8]),
                "resources": dict(node.get("Resources") or {}),
                "type": node_type,
            }
        )
    return nodes


def _gcs_node_types() -> dict[str, str]:
    """node id (hex) -> the autoscaler node type name the GCS holds for it (where one is set)."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_resource_state  # here: a move breaks only this
        from ray.experimental.internal_kv import internal_kv_get_gcs_client

        state = get_cluster_resource_state(internal_kv_get_gcs_client())
    except Exception:
        return {}
    return {n.node_id.hex(): n.ray_node_type_name for n in state.node_states if n.ray_node_type_name}


def autoscaler_node_types() -> tuple[list[dict] | None, bool]:
    """(the node types the cluster's autoscaler may launch, whether an autoscaler is known to run). Each type:
    {"name", "resources", "max": how many it may launch}. None where an autoscaler runs but its node types cannot be
    read. Ray 2.60 gives a driver no API for them (the GCS cluster config it could hold is written by nothing in
    OSS Ray), so: that GCS config if present; else the autoscaling config file, found where Ray's cluster
    launcher puts it (~/ray_bootstrap_config.yaml on the head), in HPO_AUTOSCALING_CONFIG, or in the monitor's
    command line in this session's monitor.log (a head started with ray start --autoscaling-config=FILE)."""
    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        groups = [
            {
                "name": g.name,
                "resources": dict(g.resources),
                "max": g.max_count if g.max_count >= 0 else 10**6,
            }
            for g in config.node_group_configs
        ]
        return groups, True
    path = _autoscaling_config_path()
    if path is not None:
        import yaml  # here: only when a config file exists

        try:
            data = yaml.safe_load(open(path)) or {}
        except (OSError, yaml.YAMLError):
            return None, True
        total_max = data.get("max_workers", 10**6)
        types = []
        for name, node_type in (data.get("available_node_types") or {}).items():
            if name == data.get("head_node_type"):
                continue  # the head is live (or the cluster would not answer)
            count = min(node_type.get("max_workers", total_max), total_max)
            if count > 0:
                types.append(
                    {"name": name, "resources": dict(node_type.get("resources") or {}), "max": count}
                )
        return types, True
    return (None, True) if _autoscaler_v2_enabled() else ([], False)


def _autoscaling_config_path() -> str | None:
    candidates = [os.environ.get("HPO_AUTOSCALING_CONFIG"), os.path.expanduser("~/ray_bootstrap_config.yaml")]
    try:
        logs = os.path.join(session_dir(), "logs")
        for log in sorted(os.listdir(logs)):
            if log.startswith("monitor") and log.endswith((".log", ".err", ".out")):
                with open(os.path.join(logs, log), errors="replace") as fh:
                    head = fh.read(200_000)
                if found := re.search(r"--autoscaling-config=([^'\",\] ]+)", head):
                    candidates.append(found.group(1))
    except (OSError, RuntimeError, AttributeError):
        pass
    return next((c for c in candidates if c and os.path.isfile(os.path.expanduser(c))), None)


def _autoscaler_v2_enabled() -> bool:
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2  # here: a move breaks only this

        return bool(is_autoscaler_v2())
    except Exception:
        return False


def node_draining(node_id: str) -> bool:
    """Whether the GCS has node `node_id` draining (ray._private.state.get_draining_nodes: private; Ray Train V2's
    own PreemptionWatcher asks the same)."""
    try:
        return node_id in ray._private.state.state.get_draining_nodes()
    except Exception:
        return False


def node_gone(node_id: str | None) -> bool:
    """Whether the GCS says node `node_id` is dead or draining."""
    if not node_id:
        return False
    if node_draining(node_id):
        return True
    return not any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def head_resource() -> str:
    """The resource only the cluster's head offers (Ray 2.60: node:__internal_head__, 1 of it). A job's own small
    actors (the pool's coordinator, its group hosts and their Ray Train controllers, the relaying Tune trials)
    ask for a sliver of it (`on_the_head`), so they live where the cluster itself lives: a worker node lost
    mid-job takes none of the job's bookkeeping with it, and a head that advertises no CPUs (cluster/aws.yaml)
    still holds them."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME  # here, not at the top: a move breaks only this

    return HEAD_NODE_RESOURCE_NAME


HEAD_SLIVER = 0.001  # of the head's own resource, per actor that asks to live there


def on_the_head() -> dict[str, float]:
    """The resources that put one of the job's small actors on the head (see head_resource)."""
    return {head_resource(): HEAD_SLIVER}
