"""Ray's node start: an embedded head's settings and the quick start around ray.init, the autoscaler monitor it stops."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time

import ray

from orchestrator.ray_support.ray_compat.patching import patched

# Ray 2.60's raylet can start idle Python workers ahead: when the first driver connects
# (`prestart_worker_first_driver`, ray.init's private `_system_config`, on by default) or as soon as the raylet
# is up (`enable_worker_prestart`, which also lets a lease request start workers for the requests queued behind
# it); as many as the raylet's `--num_prestart_python_workers`, which Ray sets to the node's CPUs. A trial actor
# lands in one only if it asks for no runtime_env, and Tune's always ask for one (trial_actors_inherit says how
# that is lifted). Idle workers nothing uses cost 2 CPU-s of imports on 2 cores while the trials' own processes
# start (a 16 x 10 job: 10.6-11.5 s with them, 10.0-10.3 s without), so an embedded Ray starts as many as will
# host a trial, each with the trial's module imported (`preload_python_modules`: the raylet has every Python
# worker it starts import them before its first task), or none. They start with the raylet, ~0.5 s before the
# driver connects: 16 x 10 jobs, alternated 4 times, 12.05 -> 11.65 s (2 at a time) and 15.15 -> 13.5 s (1 at a
# time) median against starting them when the driver connects; a job whose trial processes die and are retried
# started the same 3 workers either way.
#
# The raylet connects to its own object store (a thread it has just started) through Ray's connect-retry loop,
# which waits `raylet_client_connect_timeout_milliseconds` (1,000) between attempts, up to
# `raylet_client_num_connect_attempts` (10) times. When the store's socket is not there at the first attempt,
# the raylet stalls a whole second before it registers and starts any worker: in 7 of 12 embedded starts here
# (raylet.out: the store's debug dump, then "ObjectManager server started" 1.00 s later; ray.init 2.3-2.5 s
# against 1.4-1.6 s). Retrying every 20 ms, 500 times, none of 12 stalled. Whatever else in Ray reads these two
# settings keeps its total wait: 10 s, as with Ray's defaults.
FAST_CONNECT = {"raylet_client_connect_timeout_milliseconds": 20, "raylet_client_num_connect_attempts": 500}


def embedded_system_config(preload: tuple[str, ...] = ()) -> dict:
    """`ray.init(_system_config=...)` for an embedded head: workers started with the raylet, with `preload`
    imported, if `preload` names modules, else none; local connects retried every 20 ms (FAST_CONNECT). A new
    dict each call, because ray.init adds the session's own settings (its object-spilling directory) to the
    one it is given."""
    config = {"prestart_worker_first_driver": False, **FAST_CONNECT}
    if preload:
        config.update(enable_worker_prestart=True, preload_python_modules=list(preload))
    return config


_REGISTER_WAIT_S = 90.0  # how long an embedded head's raylet may take to register (Ray's own wait: 30 s)
PRESTART_FLAG = "--num_prestart_python_workers="  # Ray 2.60: the raylet's flag, from services.start_raylet
# Ray 2.60: `list2cmdline([sys.executable, setup_worker.py, default_worker.py, ARGS])`; the raylet drops
# setup_worker.py from a worker's command when the worker has no runtime_env
_WORKER_COMMAND_FLAG = "--python_worker_command="


def _launched_by(launcher: list[str], argument: str) -> str:
    """The raylet's `--python_worker_command=` argument with `launcher` in place of the Python interpreter;
    unchanged if Ray builds that command otherwise (the live test then finds its workers not forked)."""
    prefix = _WORKER_COMMAND_FLAG + subprocess.list2cmdline([sys.executable]) + " "
    if not argument.startswith(prefix):
        return argument
    return _WORKER_COMMAND_FLAG + subprocess.list2cmdline(launcher) + " " + argument[len(prefix) :]


def _when_listed(get_node, gcs_address: str, node_id: str):
    """Ray's `services.get_node`, called once the GCS lists the node (asked every 20 ms, for up to
    _REGISTER_WAIT_S): see quick_embedded_start."""
    client = ray._raylet.GcsClient(address=gcs_address)
    deadline = time.monotonic() + _REGISTER_WAIT_S  # then Ray's own call, which waits and reports
    while time.monotonic() < deadline:
        try:
            listed = any(key.hex() == node_id for key in client.get_all_node_info(timeout=5))
        except Exception:  # whatever went wrong, Ray's own call (which waits and reports) decides
            break
        if listed:
            break
        time.sleep(0.02)
    return get_node(gcs_address, node_id)


@contextlib.contextmanager
def quick_embedded_start(*, dashboard: bool, prestart: int = 0, worker_launcher: list[str] | None = None):
    """Around `ray.init(address="local", include_dashboard=dashboard)`: the same head node, up ~1.3 s sooner
    without a dashboard (2.2 s against 2.9-4.0 s measured here), ~0.5 s sooner on average with one, and with
    `prestart` idle workers for embedded_system_config's prestart instead of one per CPU. Ray 2.60's head start
    wastes two waits and a process, and this removes them for the duration of the call:

    - With include_dashboard=False, `Node.start_api_server` still starts the dashboard's Python process with
      only its usage-statistics module loaded (`--modules-to-load=UsageStatsHead`: no state API, no jobs API,
      no web UI), and polls the GCS until that process has written its URL (1.0-1.25 s, a CPU-s of imports)
      before it starts the raylet. Without it Ray records no dashboard URL, which is what a caller with the
      dashboard off sees anyway; the state API is absent in both cases.
    - Also without the dashboard, `Node.start_head_processes` starts the autoscaler's monitor process
      (0.6 CPU-s of imports while the raylet starts). An embedded head is one fixed node with no autoscaler
      config: the monitor has nothing to scale, hpo reads no autoscaler state of an embedded Ray
      (capacity.cluster_offer), and without a dashboard nothing shows its status. `RayParams.no_monitor`, what
      `ray start --no-monitor` sets, skips it.
    - `Node.__init__` then waits for the new raylet to register through `services.get_node`, whose C++
      accessor retries once a second: a raylet that registers just after an attempt costs up to a second
      more (the start was 2.2 s or 3.2 s, nothing between). Here the GCS is asked every 20 ms first
      (`GcsClient.get_all_node_info`) and Ray's own call made once the node is listed. And for up to
      _REGISTER_WAIT_S, not Ray's fixed 30 s (`raylet_start_wait_time_s` in `Node.__init__`, not a setting): on
      2 busy cores a raylet registered later than that in some CI runs (the `hpo up` test's head beside the
      suite's heaviest tests), and the start failed ("The current node timed out during startup").
    - `services.start_raylet` gives the raylet `--num_prestart_python_workers` = the node's CPUs; with
      `prestart`, the command that `services.start_ray_process` is handed for the raylet says `prestart`.
    - With `worker_launcher` (a fork server's, ray_support/forkserver.py), the raylet's command for a Python
      worker starts with it instead of the Python interpreter (`--python_worker_command`, from
      `services.start_raylet`).
    """
    node_class, services = ray._private.node.Node, ray._private.services
    start_api_server, start_head, get_node = (
        node_class.start_api_server,
        node_class.start_head_processes,
        services.get_node,
    )
    start_ray_process = services.start_ray_process

    def no_api_server(self, *, include_dashboard, raise_on_failure):
        if include_dashboard is not False:
            return start_api_server(
                self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure
            )
        self._webui_url = None
        return None

    def head_without_monitor(self):
        self._ray_params.no_monitor = True
        return start_head(self)

    def start_raylet_as_asked(command, process_type, *args, **kwargs):
        if process_type == ray._private.ray_constants.PROCESS_TYPE_RAYLET:
            if prestart:
                command = [
                    f"{PRESTART_FLAG}{prestart}" if a.startswith(PRESTART_FLAG) else a for a in command
                ]
            if worker_launcher:
                command = [_launched_by(worker_launcher, a) for a in command]
        return start_ray_process(command, process_type, *args, **kwargs)

    node_patches = (
        {} if dashboard else {"start_api_server": no_api_server, "start_head_processes": head_without_monitor}
    )
    service_patches = {"get_node": functools.partial(_when_listed, get_node)}
    if prestart or worker_launcher:
        service_patches["start_ray_process"] = start_raylet_as_asked
    with patched(node_class, **node_patches), patched(services, **service_patches):
        yield


@contextlib.contextmanager
def forked_node_start(*, worker_launcher: list[str] | None, on_raylet):
    """Around `ray start` run in this process (ray_support/node.py): the raylet's command for a Python worker
    starts with `worker_launcher` (a fork server's, if given) instead of the Python interpreter, `on_raylet(pid)`
    is called as soon as the raylet runs, and the node may take _REGISTER_WAIT_S to register instead of Ray's
    fixed 30 s (`Node.__init__` calls `services.get_node` until then: see quick_embedded_start)."""
    services = ray._private.services
    start_ray_process, get_node = services.start_ray_process, services.get_node

    def start_raylet_launched(command, process_type, *args, **kwargs):
        if process_type != ray._private.ray_constants.PROCESS_TYPE_RAYLET:
            return start_ray_process(command, process_type, *args, **kwargs)
        if worker_launcher:
            command = [_launched_by(worker_launcher, a) for a in command]
        info = start_ray_process(command, process_type, *args, **kwargs)
        on_raylet(info.process.pid)  # Ray 2.60: a ProcessInfo whose `process` is the Popen
        return info

    when_listed = functools.partial(_when_listed, get_node)
    with patched(services, start_ray_process=start_raylet_launched, get_node=when_listed):
        yield


MONITOR_PROCESS = ray._private.ray_constants.PROCESS_TYPE_MONITOR  # Ray 2.60: "monitor"


def stop_autoscaler_monitor() -> bool:
    """Ray 2.60: SIGKILL the autoscaler monitor of a head this process started, before `ray.shutdown()`. The
    shutdown stops the GCS first and then SIGTERMs the monitor. The monitor's SIGTERM handler reports its own
    death to the GCS, which is gone by then, so it hangs until Ray SIGKILLs it after `wait_timeout_seconds`
    (1 s, measured every time: 1.02 s of a 1.43 s shutdown). Ray SIGKILLs it in the end anyway, with nothing
    to clean up on an embedded head. Left to Ray where the handler has work:
    RAY_AUTOSCALER_FATESHARE_WORKERS=1 makes it take down the autoscaler's worker nodes. Reaches into
    `worker._global_node.all_processes` (ProcessInfo.process: a Popen). Returns whether it stopped one."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not node.head or os.environ.get("RAY_AUTOSCALER_FATESHARE_WORKERS") == "1":
        return False
    infos = node.all_processes.get(MONITOR_PROCESS) or []
    for info in infos:
        info.process.kill()
        info.process.wait(timeout=10)
    node.all_processes.pop(MONITOR_PROCESS, None)
    return bool(infos)


def prestart_workers(count: int, keep_alive_s: int) -> None:
    """Ask this process's node's raylet to start `count` idle Python workers now, each kept alive while idle for
    `keep_alive_s` seconds (else the raylet kills idle workers beyond its soft limit, the node's CPUs, after a
    second). They belong to no job yet, so the next trial actor of any job that asks for no runtime_env lands in
    one (trial_actors_inherit), and each imports the modules the node was started to preload
    (embedded_system_config). Ray 2.60 starts them only with the raylet (its `--num_prestart_python_workers`);
    later, only its `NodeManagerService.PrestartWorkers` RPC does, which Ray's Python API does not expose: it is
    called here through Ray's own gRPC channel (`ray._private.grpc_utils.init_grpc_channel`, which adds the
    cluster's auth token)."""
    from ray._private.grpc_utils import init_grpc_channel  # here, not at the top: a move breaks only this
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    here = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == here)
    channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
    try:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
            node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.PYTHON, num_workers=count, keep_alive_duration_secs=keep_alive_s
            ),
            timeout=10,
        )
    finally:
        channel.close()
