"""Every private Ray API, and every piece of Ray's internal behaviour, that hpo relies on: here and nowhere else.

One module per Ray component: `core` (the GCS store, joining, the session, placement groups), `node_start` (an
embedded head's start), `logs` (worker output relayed to the driver, Ray's loggers), `errors` (what Ray's errors
wrap, and Ray's error text: read only there), `tune` (Tune's trials, controller, schedulers, searcher), `train`
(Ray Train V2), `cluster` (nodes, node types, the autoscaler, the head). Every patch goes through
`patching.patched`, which puts Ray's own back however the block ends and counts the calls Ray makes into it.

Each entry names what it reaches into and was checked against CHECKED_WITH (the Ray pinned in pyproject.toml).
tests/test_ray_compat.py exercises each one against the real Ray, so a Ray upgrade that moves or changes one
fails there, by name, before it fails a user's job. When upgrading Ray: run that test first, fix what it
names here, and bump CHECKED_WITH. Callers import the names from this package.
"""

from __future__ import annotations

from orchestrator.ray_support.ray_compat.cluster import (
    ACCELERATOR_SLIVER,
    HEAD_SLIVER,
    LOCAL_NODE_TYPE,
    NODE_GROUP_LABEL,
    accelerator_resource,
    autoscaler_node_types,
    fake_head_node_id,
    head_resource,
    live_nodes,
    node_draining,
    node_gone,
    on_the_head,
    validate_cluster_config,
)
from orchestrator.ray_support.ray_compat.core import (
    dashboard_url,
    enable_token_auth,
    job_placement_groups,
    kv_del,
    kv_get,
    kv_put,
    kv_ready,
    placement_group,
    refresh_ray_config,
    session_dir,
    started_here_without_dashboard,
)
from orchestrator.ray_support.ray_compat.errors import (
    NODE_DEATH_TEXTS,
    contains_error,
    errors_within,
    is_refused_token,
    lost_node_error,
    preempted_error,
)
from orchestrator.ray_support.ray_compat.logs import (
    PRINT_LOGS_HANDLER,
    OneLineErrors,
    quiet_worker_stops,
    without_stop_noise,
)
from orchestrator.ray_support.ray_compat.node_start import (
    FAST_CONNECT,
    MONITOR_PROCESS,
    PRESTART_FLAG,
    embedded_system_config,
    fast_connect_env,
    quick_embedded_start,
    stop_autoscaler_monitor,
)
from orchestrator.ray_support.ray_compat.patching import (
    patched,
)
from orchestrator.ray_support.ray_compat.train import (
    TRAIN_CONTROLLER_CLASS,
    TRAIN_ENV,
    quiet_train_worker,
    train_knows_its_cluster,
)
from orchestrator.ray_support.ray_compat.tune import (
    EXPERIMENT_STATE_LOGGER,
    QUIET_LOGGERS,
    QUIET_TUNE_ENV,
    TUNE_CONTROLLER_LOGGER,
    choose_only_when_a_trial_waits,
    creation_counter,
    forget_trial_metrics,
    hyperopt_record,
    lean_experiment_state,
    lost_nodes_not_counted,
    no_retry_on,
    pin_hyperopt_suggestion,
    propagate_env,
    propagated_env,
    stop_propagating_env,
    tell_scheduler,
    trial_actor,
    trial_actor_env,
    trial_actors_inherit,
    trial_error_file,
    trial_failed_message,
    trial_name,
    was_lost_node,
)

CHECKED_WITH = "2.60.0"

__all__ = [
    "CHECKED_WITH",
    "patched",
    "kv_ready",
    "kv_put",
    "kv_get",
    "kv_del",
    "enable_token_auth",
    "refresh_ray_config",
    "dashboard_url",
    "started_here_without_dashboard",
    "session_dir",
    "job_placement_groups",
    "placement_group",
    "FAST_CONNECT",
    "fast_connect_env",
    "embedded_system_config",
    "PRESTART_FLAG",
    "quick_embedded_start",
    "MONITOR_PROCESS",
    "stop_autoscaler_monitor",
    "PRINT_LOGS_HANDLER",
    "without_stop_noise",
    "quiet_worker_stops",
    "OneLineErrors",
    "errors_within",
    "contains_error",
    "NODE_DEATH_TEXTS",
    "lost_node_error",
    "preempted_error",
    "is_refused_token",
    "stop_propagating_env",
    "trial_actor_env",
    "trial_actors_inherit",
    "propagate_env",
    "propagated_env",
    "QUIET_TUNE_ENV",
    "QUIET_LOGGERS",
    "TUNE_CONTROLLER_LOGGER",
    "EXPERIMENT_STATE_LOGGER",
    "trial_failed_message",
    "trial_name",
    "forget_trial_metrics",
    "lean_experiment_state",
    "creation_counter",
    "trial_actor",
    "trial_error_file",
    "no_retry_on",
    "lost_nodes_not_counted",
    "was_lost_node",
    "tell_scheduler",
    "choose_only_when_a_trial_waits",
    "pin_hyperopt_suggestion",
    "hyperopt_record",
    "quiet_train_worker",
    "TRAIN_ENV",
    "train_knows_its_cluster",
    "TRAIN_CONTROLLER_CLASS",
    "validate_cluster_config",
    "fake_head_node_id",
    "ACCELERATOR_SLIVER",
    "accelerator_resource",
    "LOCAL_NODE_TYPE",
    "NODE_GROUP_LABEL",
    "live_nodes",
    "autoscaler_node_types",
    "node_draining",
    "node_gone",
    "head_resource",
    "HEAD_SLIVER",
    "on_the_head",
]
