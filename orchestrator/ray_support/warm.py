"""A warm local session: one embedded Ray kept up across the runs of this process (a notebook's habit), with
trial processes started ahead, torch and the trial side imported, before each run needs them.

Measured here (digits-mlp, 4 trials x 2 epochs, 2 at a time, one process): a run on a Ray that is up but cold
took 4.4-5.1 s, its trials' processes starting and importing torch while the run waited; on a warm session,
0.9 s. What a run leaves of the session: its trial processes end with its trials (Tune stops them), so after
each run the raylet is asked for as many new ones as the run had trials at once (ray_compat.prestart_workers),
which start while the caller does whatever comes next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable

import ray

from orchestrator.errors import RunError
from orchestrator.ray_support import handoff
from orchestrator.ray_support.driver import DriverSession
from orchestrator.ray_support.processes import remove_folder
from orchestrator.ray_support.ray_compat import (
    enable_token_auth,
    prestart_workers,
    session_dir,
    trial_actor_env_here,
)
from orchestrator.ray_support.ray_env import WarmTrials, embedded_cpus
from orchestrator.ray_support.up import DOWN_FILE, STATE_FILE, TOKEN_FILE, UpSession, home

# An idle warm process holds ~300 MB; the raylet keeps one this long after it started (then, beyond the node's
# CPUs, it ends idle ones), so a session left alone for a while gives the memory back.
KEEP_WARM_S = 600

_open: list[WarmSession] = []  # the session open in this process, if one is


class WarmSession:
    """`with WarmSession(module):` an embedded Ray, every worker it starts importing `module` first; every run in
    the block joins it. On exit Ray stops, and the process is put back as it was (driver.DriverSession).

    `dashboard`: with Ray's dashboard, which DDP trials need (Ray Train's cleanup reaches the State API through
    it). Off by default: its processes start at nice 0 and import for ~20 s on 2 cores, while Ray runs every
    worker at nice 15, so a run started meanwhile starves (measured: a 64 x 10 run right after the start took
    34.9 s, 8.7 s when started 20 s later)."""

    def __init__(self, module: str, num_cpus: float | None = None, *, dashboard: bool = False):
        self.module = module
        self.num_cpus = num_cpus
        self.dashboard = dashboard
        self._driver: DriverSession | None = None

    def __enter__(self) -> WarmSession:
        if _open:
            raise RunError("a warm session is open in this process already: run the jobs inside that one")
        driver = DriverSession()
        driver.__enter__()
        try:
            if ray.is_initialized():
                raise RunError(
                    f"this process is connected to the Ray at {ray.get_runtime_context().gcs_address} already: "
                    "a warm session starts one of its own; call ray.shutdown() first, or run the jobs without it"
                )
            self.cpus = self.num_cpus or embedded_cpus(1)  # 1 beside the cores, for DDP trials' relays
            at_once = os.cpu_count() or 1
            warm = WarmTrials(self.module, 1.0, at_once)
            driver.start_ray(num_cpus=self.cpus, dashboard=self.dashboard, warm=warm)
        except BaseException:
            driver.__exit__(*sys.exc_info())
            raise
        self._driver = driver
        _open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _open.remove(self)
        driver, self._driver = self._driver, None
        driver.__exit__(*exc)


def _prestart(warm: WarmTrials, module: str, cpus: float) -> int:
    """Start the trial processes the next run like `warm`'s will want on a session that preloads `module` on
    `cpus` logical CPUs; returns how many."""
    count = warm.workers(cpus) if warm.module == module else 0
    if count:
        prestart_workers(count, KEEP_WARM_S)
    return count


def top_up(warm: WarmTrials | None, up: UpSession | None = None) -> int:
    """After a run: if it ran in this process's warm session, or joined `up` (hpo up's), start trial processes
    ahead for the next one. Returns how many (0 outside a session, or for trials that take no warm process:
    DDP, GPU)."""
    if warm is None or not ray.is_initialized():
        return 0
    with contextlib.suppress(Exception):  # warmth only saves time: a raylet that does not answer costs none
        if up is not None:
            return _prestart(warm, up.module, up.cpus)
        if _open:
            return _prestart(warm, _open[-1].module, _open[-1].cpus)
    return 0


def joinable(progress) -> UpSession | None:
    """The warm session of `hpo up` that a run started here, with no address, joins: one that is up and serves
    this directory (its trial processes import workloads from there), unless this process has a Ray already."""
    if _open or ray.is_initialized():
        return None
    up = UpSession.read()
    if up is None:
        return None
    if not up.serves(os.getcwd()):
        progress(
            f"a warm session (hpo up) is up for {up.cwd}; this run, started in {os.getcwd()}, starts a Ray "
            "of its own"
        )
        return None
    progress(f"joining the warm session of `hpo up` (Ray at {up.address}; `hpo down` stops it)")
    return up


def serve(module: str, num_cpus: float | None, run_job: Callable[[list[str]], int] | None = None) -> None:
    """The daemon of `hpo up` (up.start runs it): a warm session until SIGTERM or SIGINT, whose whereabouts are
    in up.json while it is up; then nothing left of it. With `run_job` (the CLI's: `hpo ARGV` in this process,
    its exit code), it drives the runs that `hpo run` and `hpo resume` hand it (handoff.py), one at a time, in
    its main thread; a SIGTERM while it drives one winds that run down, and the daemon ends after it only when
    `hpo down` asked (up.DOWN_FILE)."""
    folder = home()
    (folder / DOWN_FILE).unlink(missing_ok=True)
    settings = handoff.launch_environment()  # what the command's Ray settings must match: what `hpo up` had
    token = folder / TOKEN_FILE
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    enable_token_auth()  # RAY_AUTH_MODE=token, and Ray's cached config read again (imported already)
    stopped = threading.Event()
    folder_of_ray = None
    server = None
    try:
        with WarmSession(module, num_cpus, dashboard=True) as session:  # long up: DDP jobs join it too
            for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
                signal.signal(signum, lambda *_: stopped.set())
            folder_of_ray = session_dir()
            if run_job is not None:
                server = handoff.Server(str(folder / handoff.SOCKET_FILE), env=settings)
            up = UpSession(
                address=ray.get_runtime_context().gcs_address,
                pid=os.getpid(),
                cwd=os.getcwd(),
                cpus=session.cpus,
                module=module,
                session_dir=folder_of_ray,
                token_path=str(token),
                # every variable Tune would copy into a trial actor, as this session's processes inherited
                # them: a joining driver whose environment holds the same (say RAY_TRAIN_* settings that both
                # inherited from one shell) lands its trials in the warm processes, not in new ones
                env=trial_actor_env_here(),
            )
            staged = folder / f"{STATE_FILE}.{os.getpid()}"
            staged.write_text(json.dumps(dataclasses.asdict(up)))
            staged.replace(folder / STATE_FILE)  # whole, or not there
            print(f"warm session up: Ray at {up.address}, serving {up.cwd}", flush=True)
            while not stopped.is_set():
                job = server.next_job(timeout=0.5) if server else None
                if job is None:
                    stopped.wait(0.5 if server is None else 0)
                    continue
                print(f"driving: hpo {' '.join(job.request['argv'])}", flush=True)
                server.drive(job, run_job)
                if (folder / DOWN_FILE).exists():
                    stopped.set()
    finally:
        if server is not None:
            server.close()
        (folder / DOWN_FILE).unlink(missing_ok=True)
        (folder / STATE_FILE).unlink(missing_ok=True)
        token.unlink(missing_ok=True)
        if folder_of_ray:
            remove_folder(folder_of_ray)
    print("warm session down", flush=True)
