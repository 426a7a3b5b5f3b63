"""Where trials run: starting or joining Ray, and refusing configurations that would hang."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import time

from orchestrator.errors import RunError

DRIVER_CPU = 0.01  # logical CPUs of the Tune trial that drives a multi-worker TorchTrainer


def trial_cpus(train) -> float:
    return train.workers * train.cpus_per_worker + (DRIVER_CPU if train.workers > 1 else 0.0)


def start_ray(address: str | None = None, num_cpus: float | None = None, *, min_cpus: float = 1) -> bool:
    """Join `address`, or start an embedded Ray. Returns True if this call started Ray (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    # Workers must import user workloads from the working directory, as the driver does.
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    worker_logging = ray.LoggingConfig(log_level="WARNING")  # Ray's per-report INFO lines drown the progress
    if address:
        _join(address, worker_logging)
    else:
        # address="local": never join a cluster a killed head left in ray_current_cluster. Keep the dashboard:
        # without it Ray Train's placement-group cleanup cannot reach the State API and DDP trials hang.
        cpus = num_cpus or max(os.cpu_count() or 1, int(-(-min_cpus // 1)))
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=True,
            logging_level=logging.WARNING,
            logging_config=worker_logging,
        )
    return True


def check_address(address: str | None) -> None:
    """Refuse an --address that cannot be a reachable Ray head, before anything is written. ray.init retries an
    unreachable GCS for minutes (measured on Ray 2.60: still waiting after 3 min for 127.0.0.1:1)."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise RunError(
            f"--address {address}: that is a dashboard (Jobs API) address, which hpo submit takes; "
            "to run here against a cluster give its GCS address HOST:PORT (ray start --head prints it)"
        )
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RunError(
            f"--address {address!r}: give a Ray head's GCS address as HOST:PORT (e.g. 10.0.0.5:6379), "
            "ray://HOST:PORT, or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise RunError(
            f"--address {address}: cannot reach a Ray head there ({error.strerror or error}); start one "
            f"(ray start --head --port={port}) or fix the address"
        ) from None


def _join(address: str, worker_logging) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    check_address(address)
    # Ray 2.60 joins an explicit address with token auth off unless RAY_AUTH_MODE=token, so a cluster with token
    # auth (its default) refuses a driver that has the right RAY_AUTH_TOKEN. A user who gave a token means to use
    # it. Ray reads the mode into a cached config at import; its own helper sets the variable and refreshes that.
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    try:
        with _stderr_kept_on_success():  # a refused driver's core worker logs a warning a second for 20 s
            ray.init(address=address, logging_level=logging.WARNING, logging_config=worker_logging)
    except (ConnectionError, AuthenticationError) as error:
        cause = error if isinstance(error, AuthenticationError) else error.__cause__
        if isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause):
            raise RunError(
                f"--address {address}: the Ray cluster refused this driver's auth token; set "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
            ) from None
        raise RunError(
            f"--address {address}: could not join the Ray cluster there "
            f"({str(error).splitlines()[0]}); check the address and that its head is up"
        ) from None


@contextlib.contextmanager
def _stderr_kept_on_success():
    """Hold what is written to file descriptor 2 (Ray's C++ logs too) and pass it on unless the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


def check_resources(train, embedded: bool) -> None:
    """Refuse a job whose trials can never be placed on an embedded Ray (Tune would wait forever)."""
    import ray

    if not embedded:
        return  # a real cluster may autoscale to fit
    have = ray.cluster_resources()
    if train.use_gpu and have.get("GPU", 0) < train.workers:
        raise RunError(
            f"train.use_gpu is true with {train.workers} worker(s), but this machine's Ray has "
            f"{int(have.get('GPU', 0))} GPU(s); set use_gpu: false or run on GPU nodes (--address)"
        )
    need = trial_cpus(train)
    if need > have.get("CPU", 0) + 1e-9:
        raise RunError(
            f"one trial needs {need:g} CPUs (train.workers x train.cpus_per_worker) but Ray has "
            f"{have.get('CPU', 0):g}; lower them or raise --num-cpus"
        )


def check_train_can_start(train) -> None:
    """Refuse multi-worker trials on a Ray without its dashboard. Measured on Ray 2.60: Train's placement-group
    cleaner then cannot reach the State API and the next trial's worker group never starts (RUNNING forever)."""
    if train.workers > 1 and not _dashboard_url():
        raise RunError(
            f"train.workers is {train.workers} but this Ray runs without its dashboard, and Ray Train "
            "2.60 then hangs starting worker groups; start Ray with the dashboard (ray start "
            "--include-dashboard=true) or use train.workers: 1"
        )


def _dashboard_url(wait_s: float = 15.0) -> str | None:
    """The cluster's dashboard address. A driver reads it from the GCS when it connects, and a dashboard still
    starting has not written it yet, so ask the GCS again for a while before concluding there is none."""
    from ray._private import services, worker

    deadline = time.monotonic() + wait_s
    while True:
        url = worker.get_dashboard_url() or services.get_webui_url_from_internal_kv()
        if url or time.monotonic() > deadline:
            return url
        time.sleep(0.5)


def release_train_leftovers(wait_s: float = 20.0) -> int:
    """Remove placement groups this job's Ray Train runs left on a cluster that outlives the driver; returns how
    many. Measured on Ray 2.60: a DDP trial the watchdog stops keeps its Train controller alive for a moment (its
    owner's death reaches it late); if the driver exits then, Ray removes the job's groups at job end, the
    controller retries and asks for a new group, and that one stays PENDING forever: an autoscaler would keep
    launching nodes for it. So wait for this job's controllers to die, then remove what is left."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    alive = [("job_id", "=", job), ("class_name", "=", "TrainController"), ("state", "!=", "DEAD")]
    deadline, removed, quiet_checks = time.monotonic() + wait_s, 0, 0
    # The state API calls a controller DEAD when its kill is decided; measured, it still ran (and made a new
    # group) 0.35 s later. So sweep a second after they are all DEAD, until two sweeps find nothing.
    while quiet_checks < 2 and time.monotonic() < deadline:
        time.sleep(0.5 if list_actors(filters=alive) else 1.0)
        if list_actors(filters=alive):
            continue
        left = [
            pg
            for pg, info in placement_group_table().items()  # a placement group's id ends with its job's
            if pg.endswith(job) and info["state"] != "REMOVED"
        ]
        for pg in left:
            remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg)))
        removed, quiet_checks = removed + len(left), 0 if left else quiet_checks + 1
    return removed


def keep_credentials_out_of_ray() -> None:
    """Ray Tune copies AWS_SECRET_ACCESS_KEY (and friends) from the driver's environment into every trial
    actor's runtime_env, which Ray records as job metadata and logs in runtime_env_agent.log. Trial processes
    on this machine inherit the environment anyway, and cluster nodes should get credentials from their own
    chain (instance roles, node environment), so we stop Tune from copying them."""
    from ray.tune.execution import class_cache

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        class_cache.ENV_VARS_TO_PROPAGATE.discard(name)


def quiet_tune() -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet replaces Tune's json/csv
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Without Tune's json/csv its ResultGrid cannot find metrics and says so per trial; we read our Parquet.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
