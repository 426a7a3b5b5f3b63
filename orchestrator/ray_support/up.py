"""`hpo up` / `hpo down`: a warm session that outlives commands. `hpo up` starts a daemon process that holds a
warm session (warm.py: an embedded Ray with its dashboard, trial processes started ahead with torch and the
trial side imported) and writes where it is to `$HPO_HOME/up.json` (default ~/.hpo); `hpo run` and
`hpo resume` started from the same directory hand it their run (or, while it drives another, join its Ray)
instead of starting a Ray of their own, and start the next run's trial processes when they end; `hpo down` stops the daemon, which stops its Ray, and removes Ray's session
folder and the files it wrote.

Safe by default: the Ray takes only drivers that hold its auth token (token auth, a token made for it, in a
file only its user can read, named in up.json); its dashboard listens on loopback. A run started from another
directory does not join it (its trial processes import workloads from the directory `hpo up` ran in).

The daemon is warm.py's `serve`, run as `python -m orchestrator.cli.up_daemon MODULE [NUM_CPUS]`: it also
drives the runs that `hpo run` and `hpo resume` hand it (handoff.py), so that a command pays neither Ray's
imports nor a driver's connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.errors import RunError
from orchestrator.ray_support.handoff import launch_environment
from orchestrator.ray_support.processes import process_alive, remove_folder

HOME_ENV = "HPO_HOME"
STATE_FILE = "up.json"
TOKEN_FILE = "up.token"
LOG_FILE = "up.log"
DOWN_FILE = "up.down"  # `hpo down` asked: the daemon ends after the run it drives, if it drives one
DAEMON = "orchestrator.cli.up_daemon"  # the daemon's module: warm.serve, driving the runs `hpo run` hands it
START_WAIT_S = 120.0  # the daemon's Ray and its first trial processes start in ~10 s on 2 cores
STOP_WAIT_S = 60.0


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".hpo")


@dataclasses.dataclass(frozen=True)
class UpSession:
    """What up.json says of a warm session that `hpo up` started."""

    address: str  # the GCS address a driver joins
    pid: int  # the daemon's
    cwd: str  # where it was started: its trial processes import workloads from there
    cpus: float  # its Ray's logical CPUs
    module: str  # what its trial processes import ahead
    session_dir: str  # Ray's session folder (logs, sockets), removed by `hpo down`
    token_path: str
    env: dict  # what Tune sets in trial actors, as its processes inherited it (ray_compat.trial_actors_inherit)

    @classmethod
    def read(cls) -> UpSession | None:
        """The session up now, or None (a daemon that is gone leaves a file that is not a session: removed)."""
        path = home() / STATE_FILE
        try:
            up = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # cut short or from another version: not a session anyone can join
            path.unlink(missing_ok=True)
            return None
        if not process_alive(up.pid):
            path.unlink(missing_ok=True)
            return None
        return up

    def serves(self, cwd: str) -> bool:
        return os.path.realpath(cwd) == os.path.realpath(self.cwd)

    def join(self) -> str:
        """Set up this process to join the session (its token: the run's DriverSession puts the environment
        back); returns its address."""
        os.environ["RAY_AUTH_TOKEN_PATH"] = self.token_path
        return self.address


def start(module: str, num_cpus: float | None) -> UpSession:
    """Start the daemon and wait until its session is up; RunError in one line if one is up already or it
    cannot start (the daemon's log says more)."""
    if up := UpSession.read():
        raise RunError(
            f"a warm session is up already (pid {up.pid}, Ray at {up.address}, serving {up.cwd}); "
            "`hpo down` stops it"
        )
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", DAEMON, module, str(num_cpus or "")]
    with open(folder / LOG_FILE, "w") as log:
        daemon = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # the shell's, not this process's: importing Ray set variables of its own here (RAY_CLIENT_MODE),
            # and a later `hpo run` from the same shell is handed to the daemon only if its Ray settings match
            env=launch_environment(),
        )
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if (up := UpSession.read()) and up.pid == daemon.pid:
            return up
        if daemon.poll() is not None:
            raise RunError(f"the warm session did not start: {_last_line(folder / LOG_FILE)}")
        time.sleep(0.2)
    _stop_daemon(daemon.pid, None)
    raise RunError(f"the warm session did not start within {START_WAIT_S:.0f} s (see {folder / LOG_FILE})")


def stop() -> UpSession | None:
    """Stop the session that is up, and everything it started; returns it (None if none was up)."""
    up = UpSession.read()
    if up is not None:
        (home() / DOWN_FILE).touch()  # a SIGTERM alone, while it drives a run, winds down only that run
        _stop_daemon(up.pid, up)
    for name in (STATE_FILE, TOKEN_FILE):
        (home() / name).unlink(missing_ok=True)
    return up


def _stop_daemon(pid: int, up: UpSession | None) -> None:
    """SIGTERM: the daemon stops its Ray and removes its files. If it has not within STOP_WAIT_S, SIGKILL it
    and every process of its process group (its Ray's), and remove Ray's session folder here."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the daemon leads its own group (start_new_session)
        if up is not None:
            remove_folder(up.session_dir)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
