"""Ray core: the GCS key-value store, joining a cluster (token auth, Ray's cached config), the session, placement groups."""

from __future__ import annotations

import ray
from ray.exceptions import AuthenticationError
from ray.experimental import internal_kv
from ray.util.placement_group import PlacementGroup, placement_group_table


def kv_ready() -> bool:
    """Ray 2.60: whether this process is connected to a GCS whose key-value store it can use."""
    return internal_kv._internal_kv_initialized()


def kv_put(key: bytes, value: bytes, namespace: str) -> None:
    """Ray 2.60: `_internal_kv_put` (overwrites)."""
    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: bytes, namespace: str) -> bytes | None:
    """Ray 2.60: `_internal_kv_get`."""
    return internal_kv._internal_kv_get(key, namespace=namespace)


def kv_del(key: bytes, namespace: str) -> None:
    """Ray 2.60: `_internal_kv_del`."""
    internal_kv._internal_kv_del(key, namespace=namespace)


def enable_token_auth() -> None:
    """Ray 2.60 joins an explicit address with token auth off unless RAY_AUTH_MODE=token, and reads the mode into
    a cached config at import. Its own helper sets the variable and refreshes that cache."""
    from ray._private.authentication.authentication_token_setup import (
        _enable_token_auth,
    )  # here, not at the top: a move breaks only this

    _enable_token_auth()


def token_refused(gcs_address: str, timeout_s: float = 5.0) -> bool:
    """Whether the GCS at `gcs_address` refuses this process's auth token, asked in one request (~20 ms). Ray
    2.60's ray.init retries a refused token once a second for py_gcs_connect_timeout_s (20 s) before it fails;
    a standalone GCS client (`ray._raylet.InnerGcsClient.standalone`) raises AuthenticationError at once. Any
    other outcome (an answer, a slow or unknown failure) is False: ray.init then joins, or says why not."""
    from ray._raylet import InnerGcsClient  # here, not at the top: a move breaks only this

    try:
        InnerGcsClient.standalone(gcs_address, None, int(timeout_s * 1000))
    except AuthenticationError:
        return True
    except Exception:  # noqa: BLE001 (not a refused token: ray.init tells the rest)
        return False
    return False


def refresh_ray_config() -> None:
    """Ray 2.60 caches its config (the token mode among it) when imported; read the environment again
    (`ray._raylet.Config.initialize`, what enable_token_auth itself calls)."""
    from ray._raylet import Config  # here, not at the top: a move breaks only this

    Config.initialize("")


def dashboard_url() -> str | None:
    """Ray 2.60: the dashboard address the driver read from the GCS when it connected (`worker
    .get_dashboard_url`), else the one the GCS holds now (a dashboard still starting writes it late)."""
    from ray._private import services, worker  # here, not at the top: a move breaks only this

    return worker.get_dashboard_url() or services.get_webui_url_from_internal_kv()


def started_here_without_dashboard() -> bool:
    """Ray 2.60: whether this process started the head node itself with include_dashboard=False (then there will
    never be a dashboard, and there is no need to wait for one): `worker._global_node` and its `_ray_params`."""
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and node.head and node._ray_params.include_dashboard is False)


def session_dir() -> str:
    """Ray 2.60: this process's Ray session directory (logs, sockets)."""
    return ray._private.worker._global_node.get_session_dir_path()


def job_placement_groups(job_id: str) -> list[str]:
    """Ray 2.60: the hex ids of the job's placement groups not yet removed (an id ends with its job's id)."""
    return [
        pg
        for pg, info in placement_group_table().items()
        if pg.endswith(job_id) and info["state"] != "REMOVED"
    ]


def placement_group(hex_id: str):
    """Ray 2.60: a PlacementGroup handle from the hex id `placement_group_table()` lists (`ray._raylet`)."""
    from ray._raylet import PlacementGroupID  # here, not at the top: a move breaks only this

    return PlacementGroup(PlacementGroupID.from_hex(hex_id))
