"""Where trials run: starting or joining Ray, and refusing configurations that would hang."""

from __future__ import annotations

import logging
import os
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
        ray.init(address=address, logging_level=logging.WARNING, logging_config=worker_logging)
    else:
        # address="local": never join a cluster a killed head left in ray_current_cluster. Keep the dashboard:
        # without it Ray Train's placement-group cleanup cannot reach the State API and DDP trials hang.
        cpus = num_cpus or max(os.cpu_count() or 1, int(-(-min_cpus // 1)))
        ray.init(address="local", num_cpus=cpus, include_dashboard=True, logging_level=logging.WARNING,
                 logging_config=worker_logging)
    return True


def check_resources(train, embedded: bool) -> None:
    """Refuse a job whose trials can never be placed on an embedded Ray (Tune would wait forever)."""
    import ray

    if not embedded:
        return  # a real cluster may autoscale to fit
    have = ray.cluster_resources()
    if train.use_gpu and have.get("GPU", 0) < train.workers:
        raise RunError(f"train.use_gpu is true with {train.workers} worker(s), but this machine's Ray has "
                       f"{int(have.get('GPU', 0))} GPU(s); set use_gpu: false or run on GPU nodes (--address)")
    need = trial_cpus(train)
    if need > have.get("CPU", 0) + 1e-9:
        raise RunError(f"one trial needs {need:g} CPUs (train.workers x train.cpus_per_worker) but Ray has "
                       f"{have.get('CPU', 0):g}; lower them or raise --num-cpus")


def check_train_can_start(train) -> None:
    """Refuse multi-worker trials on a Ray without its dashboard. Measured on Ray 2.60: Train's placement-group
    cleaner then cannot reach the State API and the next trial's worker group never starts (RUNNING forever)."""
    if train.workers > 1 and not _dashboard_url():
        raise RunError(f"train.workers is {train.workers} but this Ray runs without its dashboard, and Ray Train "
                       "2.60 then hangs starting worker groups; start Ray with the dashboard (ray start "
                       "--include-dashboard=true) or use train.workers: 1")


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
