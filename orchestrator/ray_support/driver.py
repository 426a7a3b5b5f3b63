"""The driver process: everything a run changes in it, owned by one context manager that puts it back.

A run changes its process: PYTHONPATH and sys.path (the driver and Ray's workers import user workloads from
the working directory), Ray Tune's quiet settings, its list of variables copied into trial actors and (on an
embedded Ray with warm trial processes) how it makes trial actors, Ray's token mode, the working directory
(Tune runs from a private one), logging levels and filters, torch's global settings and random states (sanity
checks and reproductions train in this process), and Ray itself. A library user calls `run()` twice in a
notebook, or runs a job between two of their own steps: each time, the process is left as it was found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import tempfile
import threading

import numpy as np
import ray

from orchestrator.errors import RunError, working_directory
from orchestrator.ray_support.ray_compat import (
    EXPERIMENT_STATE_LOGGER,
    QUIET_LOGGERS,
    QUIET_TUNE_ENV,
    TUNE_CONTROLLER_LOGGER,
    OneLineErrors,
    quiet_worker_stops,
    refresh_ray_config,
    stop_autoscaler_monitor,
    stop_propagating_env,
)
from orchestrator.ray_support.ray_env import WarmTrials, start_ray
from orchestrator.stopping import (
    INTERRUPTED,
    STOPPED,
    SUBMITTED_ENV,
    SecondSignal,
    StopRequest,
    exit_code_for,
    stop_grace_s,
)

# Ray Tune copies these from the driver's environment into every trial actor's runtime_env, which Ray records
# as job metadata and logs in runtime_env_agent.log. Trial processes on this machine inherit the environment
# anyway, and cluster nodes should get credentials from their own chain (instance roles, node environment).
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
_LOGGERS = ("ray", "ray.tune", TUNE_CONTROLLER_LOGGER, EXPERIMENT_STATE_LOGGER, *QUIET_LOGGERS)


# A session changes process-wide state (the environment, the working directory, signal handlers, loggers, Ray's
# connection): one thread of a process holds it at a time. The same thread may nest sessions (a sanity gate
# inside a run); another thread is refused in one line rather than left to race.
_holder = {"thread": None, "depth": 0}
_holder_lock = threading.Lock()


def _claim_process() -> None:
    me = threading.current_thread()
    with _holder_lock:
        held_by = _holder["thread"]
        if held_by is not None and held_by is not me:
            raise RunError(
                f"another hpo run, sanity check or ensemble holds this process (thread {held_by.name!r}): "
                "run them one after another, or in processes of their own"
            )
        _holder["thread"], _holder["depth"] = me, _holder["depth"] + 1


def _release_process() -> None:
    with _holder_lock:
        _holder["depth"] -= 1
        if _holder["depth"] == 0:
            _holder["thread"] = None


class DriverSession:
    """`with DriverSession() as session:` ... `session.start_ray(...)` ...: on exit Ray is stopped if the session
    started it, and the environment, sys.path, working directory, loggers, Tune's propagated variables, random
    states and torch's settings are what they were on entry."""

    def __enter__(self) -> DriverSession:
        _claim_process()
        try:
            return self._enter()
        except BaseException:
            _release_process()
            raise

    def _enter(self) -> DriverSession:
        self._environ = dict(os.environ)
        self._sys_path = list(sys.path)
        self._cwd = working_directory()
        self._loggers = {name: _logger_state(logging.getLogger(name)) for name in _LOGGERS}
        self._random = (random.getstate(), np.random.get_state())
        self._torch = _torch_state()
        self._handlers = _signal_handlers()  # ray.init sets its own SIGTERM handler: put back the caller's
        self.started_ray = False
        self._undo_quiet = self._undo_start = None
        for name, value in QUIET_TUNE_ENV.items():
            os.environ.setdefault(name, value)
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger(EXPERIMENT_STATE_LOGGER).addFilter(
            OneLineErrors()
        )  # removed with the loggers' state
        self._undo_propagate = stop_propagating_env(CREDENTIALS)
        if self._cwd not in sys.path:  # the driver imports user workloads from here, as its workers do
            sys.path.insert(0, self._cwd)
        return self

    def start_ray(
        self,
        address: str | None = None,
        num_cpus: float | None = None,
        *,
        extra_cpus: int = 0,
        dashboard: bool = True,
        warm: WarmTrials | None = None,
        inherit: dict[str, str] | None = None,
        num_gpus: float | None = None,
    ) -> None:
        """Join `address` or start an embedded Ray (with `warm`'s trial processes), unless this process is
        connected already (ray_env.start_ray says what `inherit` and `num_gpus` are)."""
        if started := start_ray(
            address,
            num_cpus,
            extra_cpus=extra_cpus,
            dashboard=dashboard,
            warm=warm,
            inherit=inherit,
            num_gpus=num_gpus,
        ):
            self.started_ray = True
            self._undo_start = started.undo
            self._undo_quiet = quiet_worker_stops()  # Ray's stops of its workers are not the run's errors

    @contextlib.contextmanager
    def catch_stops(self, stop: StopRequest, results_uri: str):
        """While inside (the search): SIGINT and SIGTERM ask `stop` to wind the run down (stopping.py); a second
        one ends the process at once, as a SIGKILL would, with Ray's processes of this session (in the `hpo`
        executable; in a library caller's process it raises KeyboardInterrupt into the run instead). Only in the main
        thread (Python runs signal handlers there); after start_ray, whose handlers these replace. Tune's own
        SIGINT handler (which ends its loop without the trials' last rows) stays off: TUNE_DISABLE_SIGINT_HANDLER
        is set in the environment this session restores."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

        def on_signal(signum, frame):
            reason = STOPPED if signum == signal.SIGTERM and os.environ.get(SUBMITTED_ENV) else INTERRUPTED
            if stop.request(reason, signal=signum, grace_s=stop_grace_s()):
                return
            if SecondSignal.exits:
                self._stop_at_once(signum, results_uri)
            raise KeyboardInterrupt  # a library caller's process: the run ends its trials and returns

        before = _signal_handlers()
        for signum in _STOP_SIGNALS:
            signal.signal(signum, on_signal)
        try:
            yield
        finally:
            _set_handlers(before)

    def _stop_at_once(self, signum: int, results_uri: str) -> None:
        """The second signal: end now. run.json still says running, so `hpo resume` continues the run as after
        a SIGKILL. The embedded Ray's processes go too (on a cluster, Ray ends the job's actors itself)."""
        line = (
            f"\nhpo: stopped at once ({signal.Signals(signum).name} again); the run can be resumed: "
            f"hpo resume {results_uri}\n"
        )
        with contextlib.suppress(OSError):
            os.write(2, line.encode())
        if self.started_ray:
            kill_children()
        os._exit(exit_code_for(signum))

    @contextlib.contextmanager
    def private_cwd(self):
        """Run Tune from a directory this run owns. A job submitted to a cluster starts in Ray's copy of its
        working dir, and Ray may delete and re-create that copy while the job runs (each node of a fake
        multi-node cluster re-extracts it into the one shared session dir); Tune's final os.getcwd() then fails
        and the job with it."""
        try:
            here = os.getcwd()
        except FileNotFoundError:  # deleted already (see errors.working_directory): the session's own start
            here = self._cwd
        with tempfile.TemporaryDirectory(prefix="hpo-driver-") as private:
            os.chdir(private)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):  # Ray may have re-created it, or not (yet)
                    os.chdir(here)

    def __exit__(self, *exc) -> None:
        try:
            self._exit()
        finally:
            _release_process()

    def _exit(self) -> None:
        if self.started_ray:
            stop_autoscaler_monitor()  # else the shutdown waits 1 s for it (ray_compat says why)
            ray.shutdown()
        if self._undo_quiet is not None:  # after the shutdown: the relay runs until then
            self._undo_quiet()
        if self._undo_start is not None:
            self._undo_start()
        self._undo_propagate()
        for name, state in self._loggers.items():
            _restore_logger(logging.getLogger(name), state)
        if threading.current_thread() is threading.main_thread():
            _set_handlers(self._handlers)
        random.setstate(self._random[0])
        np.random.set_state(self._random[1])
        _restore_torch(self._torch)
        with contextlib.suppress(OSError):
            os.chdir(self._cwd)
        sys.path[:] = self._sys_path
        changed_auth = os.environ.get("RAY_AUTH_MODE") != self._environ.get("RAY_AUTH_MODE")
        os.environ.clear()
        os.environ.update(self._environ)
        if changed_auth:  # joining a token cluster set it, and Ray cached it: read it again
            refresh_ray_config()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _signal_handlers() -> dict:
    return {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}


def _set_handlers(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signum, handler)


def kill_children() -> None:
    """SIGKILL every process this one started, and theirs (an embedded Ray's GCS, raylet and workers)."""
    import psutil  # Ray's own dependency

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def _logger_state(logger: logging.Logger) -> tuple:
    return logger.level, list(logger.handlers), list(logger.filters), logger.propagate


def _restore_logger(logger: logging.Logger, state: tuple) -> None:
    logger.level, logger.handlers[:], logger.filters[:], logger.propagate = (
        state[0],
        state[1],
        state[2],
        state[3],
    )


def _torch_state() -> dict | None:
    torch = sys.modules.get("torch")  # only if the process uses torch already: never import it for this
    if torch is None:
        return None
    return {
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "fill": torch.utils.deterministic.fill_uninitialized_memory,
        "rng": torch.get_rng_state(),
        "cudnn": (
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ),
        # the current CUDA device, only where CUDA is already initialised (asking would initialise it)
        "device": torch.cuda.current_device() if torch.cuda.is_initialized() else None,
    }


def _restore_torch(state: dict | None) -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if state is None:  # the run imported torch: leave it as a fresh import would be, but for the thread count
        state = {
            "threads": torch.get_num_threads(),
            "deterministic": False,
            "fill": True,
            "rng": torch.get_rng_state(),
            "cudnn": (False, False, True, False),
            "device": None,
        }
    torch.set_num_threads(state["threads"])
    # only if it changed: the first call in a process imports torch._dynamo and torch._inductor (2 s measured)
    if torch.are_deterministic_algorithms_enabled() != state["deterministic"]:
        torch.use_deterministic_algorithms(state["deterministic"])
    torch.utils.deterministic.fill_uninitialized_memory = state["fill"]
    torch.set_rng_state(state["rng"])
    (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) = state["cudnn"]
    if state["device"] is not None:
        torch.cuda.set_device(state["device"])
