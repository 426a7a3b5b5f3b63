"""Where trials run: starting or joining Ray, and refusing what would hang. The changes these make to the
process (PYTHONPATH, the token mode, the variables Tune sets in trial actors, how Tune makes trial actors) are
undone by ray_support/driver.py's DriverSession, which calls them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable

import ray
from ray.exceptions import AuthenticationError
from ray.util.placement_group import remove_placement_group
from ray.util.state import list_actors, list_workers

from orchestrator.errors import RunError, working_directory
from orchestrator.ray_support import forkserver
from orchestrator.ray_support.ray_compat import (
    TRAIN_CONTROLLER_CLASS,
    dashboard_url,
    embedded_system_config,
    enable_token_auth,
    is_refused_token,
    job_placement_groups,
    placement_group,
    quick_embedded_start,
    started_here_without_dashboard,
    token_refused,
    trial_actor_env,
    trial_actors_inherit,
)


def embedded_cpus(extra_cpus: int = 0) -> int:
    """Logical CPUs of an embedded Ray: this machine's cores, plus `extra_cpus` for what holds a sliver of a CPU
    without computing (a DDP trial's Tune process and Ray Train's controllers). Never what a spec asks for:
    64 logical CPUs on 2 cores would run every worker's 64 torch threads on 2 cores."""
    return (os.cpu_count() or 1) + extra_cpus


@dataclasses.dataclass(frozen=True)
class WarmTrials:
    """Trial processes an embedded Ray may start as it starts, before any trial asks for one, each with
    `module` (what a trial's process imports: torch, Tune, the training code) imported while the driver is
    still setting up the search. Only for a Ray whose every worker will be a trial: the module is imported in
    each worker that Ray starts."""

    module: str
    trial_cpus: float  # logical CPUs each trial holds
    at_once: int  # trials the job runs at once at most (search.max_concurrent, or fewer if it has fewer)

    def workers(self, cpus: float) -> int:
        """How many to start on a Ray of `cpus` logical CPUs: as many as will host a trial at once, no more
        (an idle worker with torch imported holds ~300 MB and cost 2-4 CPU-s to start)."""
        return min(self.at_once, int(cpus // self.trial_cpus) if self.trial_cpus > 0 else 0)


@dataclasses.dataclass
class Started:
    """Ray, started by this call: stop it, then call `undo` for what the start changed besides (below)."""

    undo: Callable[[], None] = lambda: None


def start_ray(
    address: str | None = None,
    num_cpus: float | None = None,
    *,
    extra_cpus: int = 0,
    dashboard: bool = True,
    warm: WarmTrials | None = None,
    inherit: dict[str, str] | None = None,
    num_gpus: float | None = None,
) -> Started | None:
    """Join `address`, or start an embedded Ray with `num_cpus` logical CPUs (default: embedded_cpus) and its
    dashboard unless `dashboard` is False (Ray Train needs it, in-process trials do not, and it costs ~2 s to
    start), and with `warm`'s trial processes. `inherit`, joining a warm session: the variables its processes
    inherited that Tune would set in trial actors (then they ask for no runtime_env, and land in its warm
    processes). `num_gpus`: the embedded Ray's GPUs (default: those Ray finds; a number is what it is told,
    GPU or not: `make gpu-check --cpu` and the tests declare one on a machine without). Returns a Started if this
    call started or joined Ray (and should stop it), else None."""
    if ray.is_initialized():
        connected = ray.get_runtime_context().gcs_address
        if address and address != "auto" and not address.startswith("ray://") and address != connected:
            raise RunError(
                f"--address {address}: this process is connected to the Ray at {connected} already; "
                "run the job from a new process to use another cluster"
            )
        return None
    # Workers must import user workloads from the working directory, as the driver does.
    paths = [working_directory()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    worker_logging = ray.LoggingConfig(log_level="WARNING")  # Ray's per-report INFO lines drown the progress
    if address:
        _join(address, worker_logging)
        return Started(undo=trial_actors_inherit(inherit)) if inherit else Started()
    # address="local": never join a cluster a killed head left in ray_current_cluster. The dashboard for DDP
    # jobs: without it Ray Train's placement-group cleanup cannot reach the State API and DDP trials hang.
    cpus = num_cpus or embedded_cpus(extra_cpus)
    prestart = warm.workers(cpus) if warm else 0
    # The raylet's workers (those it starts ahead too) inherit this process's environment; Tune's trial actors
    # then need no runtime_env of their own to have the variables Tune sets (ray_compat.trial_actors_inherit).
    # A trial actor with one is started through Ray's setup_worker.py, which imports Ray before it execs the
    # worker, which imports Ray again: ~1 s of CPU per trial process, measured.
    for name, value in trial_actor_env().items():
        os.environ.setdefault(name, value)
    # Workers forked from one process that has imported torch (forkserver.py); the raylet inherits where it is.
    fork = forkserver.start()
    if fork:
        os.environ.update(fork.environment)
    inherit_undo = trial_actors_inherit(dict(os.environ))

    def undo() -> None:
        inherit_undo()
        if fork:
            fork.stop()
            for name, value in fork.environment.items():
                if os.environ.get(name) == value:
                    del os.environ[name]

    started = Started(undo=undo)
    try:
        with quick_embedded_start(
            dashboard=dashboard, prestart=prestart, worker_launcher=fork.launcher_command() if fork else None
        ):
            ray.init(
                address="local",
                num_cpus=cpus,
                num_gpus=num_gpus,
                include_dashboard=dashboard,
                logging_level=logging.WARNING,
                logging_config=worker_logging,
                _system_config=embedded_system_config((warm.module,) if prestart else ()),
            )
    except BaseException:
        started.undo()
        raise
    return started


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
    check_address(address)
    # Ray 2.60 joins an explicit address with token auth off unless RAY_AUTH_MODE=token, so a cluster with token
    # auth (its default) refuses a driver that has the right RAY_AUTH_TOKEN. A user who gave a token means to use
    # it. Ray reads the mode into a cached config at import; its own helper sets the variable and refreshes that.
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        enable_token_auth()
    refused = RunError(
        f"--address {address}: the Ray cluster refused this driver's auth token; set "
        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
    )
    try:
        with _stderr_kept_on_success():  # a refused driver's core worker logs a warning a second for 20 s
            # a GCS address (HOST:PORT, check_address has seen it) is asked first, in one request: ray.init
            # would retry a refused token for 20 s before failing
            if (
                address not in ("auto", "local")
                and not address.startswith("ray://")
                and token_refused(address)
            ):
                raise refused
            ray.init(address=address, logging_level=logging.WARNING, logging_config=worker_logging)
    except (ConnectionError, AuthenticationError) as error:
        if is_refused_token(error):
            raise refused from None
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


def has_dashboard(wait_s: float = 15.0) -> bool:
    """Whether the cluster runs Ray's dashboard. A driver reads its address from the GCS when it connects, and a
    dashboard still starting has not written it yet, so ask the GCS again for a while before concluding there is
    none (unless this process started Ray itself without one)."""
    deadline = time.monotonic() + wait_s
    while not started_here_without_dashboard():
        if dashboard_url():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return False


def release_train_leftovers(wait_s: float = 30.0) -> int:
    """Remove placement groups this job's Ray Train runs left on a cluster that outlives the driver; returns how
    many. Measured on Ray 2.60: a DDP trial the watchdog stops keeps its Train controller alive for a moment (its
    owner's death reaches it late); if the driver exits then, Ray removes the job's groups at job end, the
    controller retries and asks for a new group, and that one stays PENDING forever: an autoscaler would keep
    launching nodes for it. So wait until this job's controllers are dead, processes and all, then remove what
    is left."""
    job = ray.get_runtime_context().get_job_id()
    # The state API, asked without an address, asks the cluster started last on this machine
    # (ray_current_cluster), which need not be the one this driver joined: name ours.
    cluster = ray.get_runtime_context().gcs_address
    ours = [("job_id", "=", job), ("class_name", "=", TRAIN_CONTROLLER_CLASS)]
    deadline, removed, quiet_checks = time.monotonic() + wait_s, 0, 0
    # The state API calls a controller DEAD when its kill is decided, and its process may run on for a while
    # (0.35 s measured on an idle machine, seconds under load) and make a new group. So wait until no controller
    # of this job is alive, nor its worker process; then sweep, a second apart, until two sweeps find nothing.
    while quiet_checks < 2 and time.monotonic() < deadline:
        controllers = list_actors(address=cluster, filters=ours, limit=10_000)
        if any(actor.state != "DEAD" for actor in controllers) or _processes_alive(cluster, controllers):
            time.sleep(0.5)
            continue
        left = job_placement_groups(job)
        for pg in left:
            remove_placement_group(placement_group(pg))
        removed, quiet_checks = removed + len(left), 0 if left else quiet_checks + 1
        time.sleep(1.0)
    return removed


def _processes_alive(cluster: str, actors) -> bool:
    """Whether the worker process of any of `actors` is still running (the GCS worker table)."""
    alive = list_workers(
        address=cluster, filters=[("is_alive", "=", "True")], limit=10_000, raise_on_missing_output=False
    )
    running = {(w.node_id, w.pid) for w in alive}
    return any((a.node_id, a.pid) in running for a in actors if a.pid)
