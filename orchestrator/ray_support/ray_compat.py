"""Every private Ray API, and every piece of Ray's internal behaviour, that hpo relies on: here and nowhere else.

Each entry names what it reaches into and was checked against CHECKED_WITH (the Ray pinned in pyproject.toml).
tests/test_ray_compat.py exercises each one against the real Ray, so a Ray upgrade that moves or changes one
fails there, by name, before it fails a user's job. When upgrading Ray: run that test first, fix what it
names here, and bump CHECKED_WITH.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time

import ray
from ray.experimental import internal_kv
from ray.tune.schedulers import TrialScheduler
from ray.util.placement_group import PlacementGroup, placement_group_table

from orchestrator.results.summary import UNTYPED_NODE as _UNTYPED_NODE

CHECKED_WITH = "2.60.0"


# -- the GCS key-value store (ray.experimental.internal_kv: private functions) -----------------------------
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


# -- joining a cluster ------------------------------------------------------------------------------------
def enable_token_auth() -> None:
    """Ray 2.60 joins an explicit address with token auth off unless RAY_AUTH_MODE=token, and reads the mode into
    a cached config at import. Its own helper sets the variable and refreshes that cache."""
    from ray._private.authentication.authentication_token_setup import (
        _enable_token_auth,
    )  # here, not at the top: a move breaks only this

    _enable_token_auth()


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


def fast_connect_env() -> dict[str, str]:
    """FAST_CONNECT as the environment of a `ray start` (Ray's C++ processes read RAY_<setting>)."""
    return {f"RAY_{name}": str(value) for name, value in FAST_CONNECT.items()}


def embedded_system_config(preload: tuple[str, ...] = ()) -> dict:
    """`ray.init(_system_config=...)` for an embedded head: workers started with the raylet, with `preload`
    imported, if `preload` names modules, else none; local connects retried every 20 ms (FAST_CONNECT). A new
    dict each call, because ray.init adds the session's own settings (its object-spilling directory) to the
    one it is given."""
    config = {"prestart_worker_first_driver": False, **FAST_CONNECT}
    if preload:
        config.update(enable_worker_prestart=True, preload_python_modules=list(preload))
    return config


PRESTART_FLAG = "--num_prestart_python_workers="  # Ray 2.60: the raylet's flag, from services.start_raylet


@contextlib.contextmanager
def patched(owner, **replacements):
    """While inside: each named attribute of `owner` (a class or module of Ray's) is its replacement; the
    originals are put back however the block ends. Every patch hpo makes to Ray goes through here."""
    originals = {name: getattr(owner, name) for name in replacements}
    for name, value in replacements.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(owner, name, value)


@contextlib.contextmanager
def quick_embedded_start(*, dashboard: bool, prestart: int = 0):
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
      (`GcsClient.get_all_node_info`) and Ray's own call made once the node is listed.
    - `services.start_raylet` gives the raylet `--num_prestart_python_workers` = the node's CPUs; with
      `prestart`, the command that `services.start_ray_process` is handed for the raylet says `prestart`.
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

    def get_node_when_listed(gcs_address, node_id):
        client = ray._raylet.GcsClient(address=gcs_address)
        deadline = time.monotonic() + 30  # Ray's own wait for a raylet (raylet_start_wait_time_s) follows
        while time.monotonic() < deadline:
            try:
                listed = any(key.hex() == node_id for key in client.get_all_node_info(timeout=5))
            except Exception:  # whatever went wrong, Ray's own call (which waits and reports) decides
                break
            if listed:
                break
            time.sleep(0.02)
        return get_node(gcs_address, node_id)

    def start_with_prestart(command, process_type, *args, **kwargs):
        if process_type == ray._private.ray_constants.PROCESS_TYPE_RAYLET:
            command = [f"{PRESTART_FLAG}{prestart}" if a.startswith(PRESTART_FLAG) else a for a in command]
        return start_ray_process(command, process_type, *args, **kwargs)

    node_patches = (
        {} if dashboard else {"start_api_server": no_api_server, "start_head_processes": head_without_monitor}
    )
    service_patches = {"get_node": get_node_when_listed}
    if prestart:
        service_patches["start_ray_process"] = start_with_prestart
    with patched(node_class, **node_patches), patched(services, **service_patches):
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


# -- worker output relayed to the driver -------------------------------------------------------------------
# Ray 2.60 stops a worker it no longer needs (its job ended, its trial's placement group removed) with SIGTERM,
# whose handler (`sigterm_handler` in worker.py's main_loop) raises SystemExit. Arriving while the worker runs
# a weakref or garbage-collector callback, that SystemExit cannot be raised there: Python prints "Exception
# ignored in: ..." with a traceback and "SystemExit: 1" to the worker's stderr, and Ray relays it to the
# driver's, where a user reads it as an error of their run (seen once at the end of a successful `hpo run`).
PRINT_LOGS_HANDLER = "ray_print_logs"  # Ray 2.60: the name worker.connect gives the driver's relay handler


def without_stop_noise(lines: list[str]) -> list[str]:
    """`lines` of a worker's stderr without the blocks Python printed for a SystemExit from Ray's SIGTERM
    handler that it could not raise; anything else, another ignored exception included, is kept."""
    kept, i = [], 0
    while i < len(lines):
        if lines[i].startswith("Exception ignored"):
            end = i + 1  # the traceback's lines, indented (or blank), up to the exception's own line
            while end < len(lines) and (lines[end].startswith(("Traceback", " ")) or not lines[end].strip()):
                end += 1
            if (
                end < len(lines)
                and lines[end].startswith("SystemExit")
                and any(line.endswith(", in sigterm_handler") for line in lines[i:end])
            ):
                i = end + 1
                continue
        kept.append(lines[i])
        i += 1
    return kept


class _QuietStops:
    """The driver's relay handler, given each batch of a worker's stderr without_stop_noise."""

    def __init__(self, relay):
        self.relay = relay

    def __call__(self, data: dict) -> None:
        lines = data.get("lines")
        if data.get("is_err") and lines:
            kept = without_stop_noise(lines)
            if not kept:
                return
            if len(kept) < len(lines):
                data = {**data, "lines": kept}
        self.relay(data)


def quiet_worker_stops():
    """Ray 2.60: wrap the driver's handler of relayed worker output (`ray_logging
    .global_worker_stdstream_dispatcher`, its handler named PRINT_LOGS_HANDLER) so it drops the stop noise
    above. Returns the undo (a no-op once ray.shutdown has removed the handler)."""
    from ray._private.ray_logging import (
        global_worker_stdstream_dispatcher as dispatcher,
    )  # here, not at the top: a move breaks only this

    def swap(wrap):
        with dispatcher._lock:
            dispatcher.handlers = [(name, wrap(name, handle)) for name, handle in dispatcher.handlers]

    swap(
        lambda name, h: _QuietStops(h) if name == PRINT_LOGS_HANDLER and not isinstance(h, _QuietStops) else h
    )
    return lambda: swap(lambda name, h: h.relay if isinstance(h, _QuietStops) else h)


# -- Ray Tune ---------------------------------------------------------------------------------------------
def stop_propagating_env(names: tuple[str, ...]) -> set[str]:
    """Ray Tune 2.60 copies the variables named in `class_cache.ENV_VARS_TO_PROPAGATE` (the AWS credentials among
    them) from the driver's environment into every trial actor's runtime_env, which Ray records as job metadata
    and logs. Remove `names` from it; returns the ones removed (to put back with `propagate_env`)."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    removed = set(names) & class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(removed)
    return removed


def trial_actor_env() -> dict[str, str]:
    """Ray Tune 2.60 sets these in every trial actor's runtime_env whatever the driver's environment holds
    (`class_cache.DEFAULT_ENV_VARS`)."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    return dict(class_cache.DEFAULT_ENV_VARS)


def trial_actors_inherit(environ: dict[str, str]):
    """Ray Tune 2.60 creates every trial actor with a runtime_env of environment variables
    (`class_cache._ActorClassCache.get`: trial_actor_env, then what ENV_VARS_TO_PROPAGATE names), and a worker
    the raylet started ahead has the empty runtime_env, so no trial ever lands in one. Until the returned
    function is called, an actor class whose variables all equal those in `environ` (the environment the
    embedded Ray's processes inherited when it started) is made without a runtime_env: the same variables,
    by inheritance, in a worker that may already be running. Any other stays as Tune made it."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    get = class_cache._ActorClassCache.get
    plain: dict = {}

    def get_inheriting(self, trainable_cls):
        actor_cls = get(self, trainable_cls)
        runtime_env = actor_cls._default_options.get("runtime_env") or {}
        env_vars = runtime_env.get("env_vars") or {}
        if set(runtime_env) <= {"env_vars"} and all(environ.get(k) == v for k, v in env_vars.items()):
            if trainable_cls not in plain:
                plain[trainable_cls] = ray.remote(trainable_cls)
            return plain[trainable_cls]
        return actor_cls

    class_cache._ActorClassCache.get = get_inheriting

    def undo() -> None:
        class_cache._ActorClassCache.get = get

    return undo


def propagate_env(names: set[str]) -> None:
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    class_cache.ENV_VARS_TO_PROPAGATE.update(names)


# Tune 2.60's knobs for a run whose results go to our Parquet: no json/csv loggers (TUNE_DISABLE_AUTO_CALLBACK_
# LOGGERS), the legacy reporter (RAY_AIR_NEW_OUTPUT=0), which prints nothing at verbose=0, and no warning about
# slow experiment-state syncs (our staging is local). Tune's experiment state (for Tuner.restore, which hpo does
# not use: `hpo resume` works from the run's own storage) is written at the start and the end only
# (TUNE_GLOBAL_CHECKPOINT_S): Tune otherwise rewrites every trial's JSON state every few seconds and keeps
# each trial's JSON in memory (measured: 13 KB per trial, 130 MB for 10,000 trials).
QUIET_TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1000000000",
    # Tune logs each failed trial's whole traceback; hpo's progress says it in one line (the exception, where in
    # the user's code) and trials.parquet names tune/<trial>/error.txt, which keeps the traceback
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}
# Without Tune's json/csv, its ResultGrid cannot find metrics and says so per trial at WARNING: we read our Parquet.
QUIET_LOGGERS = {"ray.tune.analysis.experiment_analysis": logging.ERROR}
# Tune 2.60 logs "Trial task failed for trial <name>" with the trial's traceback from this logger.
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


# Tune 2.60 logs a failed sync of its experiment state (a full disk, a store gone) with the whole traceback.
EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"


class OneLineErrors(logging.Filter):
    """On a logger of Ray's: a record's traceback becomes its last line, appended to the message. What failed
    stays said; thirty lines of Ray's frames about it do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = (str(error).strip().splitlines() or [""])[0][:300]
            record.msg = f"{record.getMessage().rstrip(': ')}: {type(error).__name__}: {text}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def trial_failed_message(name: str) -> str:
    return f"Trial task failed for trial {name}"


def trial_name(trial) -> str:
    """Ray Tune 2.60's Trial: the name a trial_name_creator gave it (`custom_trial_name`), else its own."""
    return trial.custom_trial_name or str(trial)


def forget_trial_metrics(trial) -> None:
    """Ray Tune 2.60 keeps, for every trial, running statistics of every number it reported (config values
    included): `run_metadata.metric_analysis` and `metric_n_steps`, about 27 KB per trial, kept after it ends.
    Only ExperimentAnalysis's best-trial lookups read them, which hpo does not use (its results are in
    Parquet); drop them for an ended trial, so a driver of 10,000 trials does not hold them all."""
    trial.run_metadata.metric_analysis = {}
    trial.run_metadata.metric_n_steps = {}


@contextlib.contextmanager
def lean_experiment_state():
    """While inside: Ray Tune 2.60's experiment state (for Tuner.restore, which hpo does not use) leaves out the
    trials. TuneController.save_to_dir writes `_get_trial_checkpoints()`, every trial's JSON state, which it
    also keeps in memory (`_trial_metadata`): measured 68 MB for 10,000 trials at the end of a run. The searcher
    and callback state are still written, and ExperimentAnalysis gets the trials from memory. Restored after."""
    from ray.tune.execution.tune_controller import (
        TuneController,
    )  # here, not at the top: a move breaks only this

    def no_trials(self):
        self._trials_to_cache.clear()
        return {}

    with patched(TuneController, _get_trial_checkpoints=no_trials):
        yield


def creation_counter(trial) -> int:
    """Ray Tune 2.60 starts a trial's `experiment_tag` with its creation counter ("3_lr=0.01,..."):
    BasicVariantGenerator counts from 0, SearchGenerator (every Searcher) from 1."""
    return int(str(trial.experiment_tag).split("_", 1)[0])


def trial_actor(trial):
    """Ray Tune 2.60's Trial: the Ray actor running it (`temporary_state.ray_actor`), or None."""
    return trial.temporary_state.ray_actor


def trial_error_file(trial) -> str | None:
    """Ray Tune 2.60's Trial: the file holding its last error's traceback (`error_file`)."""
    return getattr(trial, "error_file", None)


@contextlib.contextmanager
def no_retry_on(error_class: type[BaseException]):
    """While inside: a Tune trial that fails with `error_class` (raised in its trainable, also as the cause of
    the RayTaskError Tune sees) is not retried, whatever FailureConfig.max_failures says. Ray Tune 2.60 has no
    such option: its TuneController asks `Trial.should_recover()` right after `Trial.handle_error(exc)`, so
    handle_error notes whether the error is final and should_recover honours it. Restored on the way out."""
    from ray.tune.experiment import Trial  # here, not at the top: a move breaks only this

    handle_error, should_recover = Trial.handle_error, Trial.should_recover

    def noting_handle_error(self, exc=None):
        self._hpo_final_error = contains_error(exc, error_class)
        return handle_error(self, exc)

    def unless_final(self):
        return not getattr(self, "_hpo_final_error", False) and should_recover(self)

    with patched(Trial, handle_error=noting_handle_error, should_recover=unless_final):
        yield


def contains_error(error: BaseException | None, error_class: type[BaseException]) -> bool:
    """Whether `error` is, or wraps, an `error_class` (see errors_within)."""
    return any(isinstance(e, error_class) for e in errors_within(error))


def errors_within(error: BaseException | None):
    """`error` and every error it wraps: through Ray 2.60's RayTaskError (its cause), Ray Train V2's
    WorkerGroupError (`worker_failures`, per rank) and ControllerError, and exception chaining."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, ray.exceptions.RayTaskError):
            with contextlib.suppress(Exception):
                todo.append(e.as_instanceof_cause())
            todo.append(getattr(e, "cause", None))
        todo.extend(getattr(e, "worker_failures", {}).values())
        todo.extend([getattr(e, "controller_failure", None), e.__cause__, e.__context__])


def tell_scheduler(scheduler, trial, results: list[dict]) -> list[dict]:
    """Tell a Tune scheduler (FIFO, ASHA) that `trial` reported `results` and ended, as TuneController would,
    without a controller: Ray 2.60's FIFO and ASHA never use the tune_controller argument. Returns the results
    the scheduler let through to the searcher (not the one it stopped the trial on, nor any after it)."""
    scheduler.on_trial_add(None, trial)
    passed = []
    for result in results:
        if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
            break
        passed.append(result)
    scheduler.on_trial_complete(None, trial, results[-1])
    return passed


class _ChoosesOnlyWhenATrialWaits:
    """See choose_only_when_a_trial_waits."""

    def choose_trial_to_run(self, tune_controller, **kwargs):
        controller = getattr(tune_controller, "_tune_controller", tune_controller)  # TrialRunnerWrapper's
        if not (controller._pending_trials or controller._paused_trials):
            return None  # what the scan below would find, without reading every trial of the job
        return super().choose_trial_to_run(tune_controller, **kwargs)


_QUICK_CHOICE: dict[type, type] = {}


def choose_only_when_a_trial_waits(scheduler):
    """Ray Tune 2.60's TuneController asks its scheduler at every step of its loop (every report, every start and
    end) which trial to start next, and FIFOScheduler.choose_trial_to_run (ASHA's is the same) answers by scanning
    every trial of the job for a PENDING one, then all again for a PAUSED one. The finished trials come first, so
    late in a 10,000-trial job that is ~3 ms per report: the per-report cost of bench/scale.py's 10,000 x 100 run
    doubled from its first tenth of reports to its last. The controller keeps its pending and paused trials in
    sets (`_pending_trials`, `_paused_trials`, kept by `_set_trial_status` and `add_trial`): when both are empty
    the scan can only answer None, so it is skipped; otherwise Tune's own scan answers, as before. Returns
    `scheduler`, its class swapped for a subclass of it with that shortcut."""
    cls = type(scheduler)
    if cls not in _QUICK_CHOICE:
        _QUICK_CHOICE[cls] = type(cls.__name__, (_ChoosesOnlyWhenATrialWaits, cls), {})
    scheduler.__class__ = _QUICK_CHOICE[cls]
    return scheduler


def pin_hyperopt_suggestion(searcher, trial_id: str, config: dict) -> None:
    """Ray 2.60's HyperOptSearch: make the suggestion it just made for `trial_id` be `config` in its own record
    (`_live_trial_mapping`, `_hpopt_trials`), so TPE learns the result at the config that actually ran. HyperOpt
    records a choice by its index (`_convert_categories_to_indices`)."""
    _, doc = searcher._live_trial_mapping[trial_id]
    vals = dict(config)
    searcher._convert_categories_to_indices(vals)
    for label in doc["misc"]["vals"]:
        if label in vals:
            doc["misc"]["vals"][label] = [vals[label]]
    searcher._hpopt_trials.refresh()


# -- Ray Train --------------------------------------------------------------------------------------------
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
    (`ENV_VARS_TO_PROPAGATE`), whose child actors inherit it. Both are put back on the way out."""
    from ray.train.v2._internal import constants  # here, not at the top: a move breaks only this

    before, listed = os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS" in constants.ENV_VARS_TO_PROPAGATE
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
    try:
        yield
    finally:
        if not listed:
            constants.ENV_VARS_TO_PROPAGATE.discard("RAY_ADDRESS")
        if before is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = before


TRAIN_CONTROLLER_CLASS = "TrainController"  # Ray Train 2.60's controller actor, one per TorchTrainer.fit()


def job_placement_groups(job_id: str) -> list[str]:
    """Ray 2.60: the hex ids of the job's placement groups not yet removed (an id ends with its job's id)."""
    return [
        pg
        for pg, info in placement_group_table().items()
        if pg.endswith(job_id) and info["state"] != "REMOVED"
    ]


def is_refused_token(error: BaseException) -> bool:
    """Ray 2.60: whether joining failed because the cluster refused this driver's auth token (an
    AuthenticationError, or a ConnectionError caused by one, or whose text names InvalidAuthToken)."""
    from ray.exceptions import AuthenticationError

    cause = error if isinstance(error, AuthenticationError) else error.__cause__
    return isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause)


def propagated_env() -> set[str]:
    """Ray Tune 2.60: the variables it copies into trial actors now (a copy)."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    return set(class_cache.ENV_VARS_TO_PROPAGATE)


def hyperopt_record(searcher, index: int) -> tuple[dict, dict]:
    """Ray 2.60's HyperOptSearch: what TPE recorded for its index-th proposal (`_hpopt_trials`): the values it
    learns from (a choice by its index) and the result."""
    trial = searcher._hpopt_trials.trials[index]
    return {k: v[0] for k, v in trial["misc"]["vals"].items()}, trial["result"]


def placement_group(hex_id: str):
    """Ray 2.60: a PlacementGroup handle from the hex id `placement_group_table()` lists (`ray._raylet`)."""
    from ray._raylet import PlacementGroupID  # here, not at the top: a move breaks only this

    return PlacementGroup(PlacementGroupID.from_hex(hex_id))


# -- the cluster launcher (used by the tests of the shipped cluster configs) ---------------------------------
def validate_cluster_config(config: dict, *, prepare: bool = True) -> dict:
    """Ray 2.60's autoscaler validator (`ray.autoscaler._private.util`); `prepare` fills the provider's
    defaults first (it needs an example config that only some providers ship). Returns the checked config."""
    from ray.autoscaler._private.util import (
        prepare_config,
        validate_config,
    )  # here, not at the top: a move breaks only this

    if prepare:
        config = prepare_config(config)
    validate_config(config)
    return config


def fake_head_node_id() -> str:
    """Ray 2.60's fake multi-node provider knows the head by this node id."""
    from ray.autoscaler._private.fake_multi_node.node_provider import (
        FAKE_HEAD_NODE_ID,
    )  # here, not at the top: a move breaks only this

    return FAKE_HEAD_NODE_ID


# -- what the cluster offers: node types, autoscaler node types, accelerators --------------------------------
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


# -- lost nodes: preempted, drained, or dead (a retry that does not count against train.max_retries) ---------
NODE_DEATH_TEXTS = (
    "The actor died because its node has died",  # Ray 2.60's core worker, for an actor on a dead node
    "the actor's node was preempted",  # ... and for one on a node drained for preemption
    "PreemptionError",  # Ray Train V2: a worker group on a draining node
)


def lost_node_error(error: BaseException | None) -> bool:
    """Whether `error` (or what it wraps) says a node was lost: a RayActorError marked preempted (Ray 2.60 marks
    an actor on a node drained for preemption), Ray Train V2's PreemptionError, or Ray's text for an actor whose
    node died (SIGKILL, a kernel panic, a cut cable: Ray cannot tell those apart from the node's silence)."""
    return any(
        (isinstance(e, ray.exceptions.RayActorError) and e.preempted)
        or type(e).__name__ == "PreemptionError"
        or any(text in str(e) for text in NODE_DEATH_TEXTS)
        for e in errors_within(error)
    )


def preempted_error(message: str) -> BaseException:
    """An error that Ray Tune 2.60 retries without counting it as a failure (Trial._handle_ray_actor_error skips
    a preempted RayActorError): a multi-worker trial whose group lost a node raises it."""
    return ray.exceptions.RayActorError(error_msg=message, preempted=True)


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


@contextlib.contextmanager
def lost_nodes_not_counted(is_lost):
    """While inside: a Tune trial failure for which `is_lost(trial, error)` is true does not count against
    FailureConfig.max_failures (Tune 2.60 counts all but preempted RayActorErrors in Trial.handle_error, which
    the controller calls just before Trial.should_recover), and `was_lost_node(trial)` says so."""
    from ray.tune.experiment import Trial  # here, not at the top: a move breaks only this

    handle_error = Trial.handle_error

    def not_counting_lost_nodes(self, exc=None):
        before = self.run_metadata.num_failures
        lost = False
        with contextlib.suppress(Exception):  # a classification error must not break Tune's failure handling
            lost = exc is not None and bool(is_lost(self, exc))
        self._hpo_lost_node = lost
        result = handle_error(self, exc)
        if lost:
            self.run_metadata.num_failures = before
        return result

    with patched(Trial, handle_error=not_counting_lost_nodes):
        yield


def was_lost_node(trial) -> bool:
    return getattr(trial, "_hpo_lost_node", False)


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
