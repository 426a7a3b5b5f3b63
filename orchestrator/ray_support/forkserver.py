"""A fork server for an embedded Ray's Python workers: what a trial process pays to start, paid once.

A Ray worker is a fresh Python process. A trial's imports Ray (~1 CPU-s), Ray Tune (~2), torch (~2-3) and, at its
first optimizer step, torch's compiler stack (~1-2): 5-7 CPU-s measured here, for every trial process of every
run, because Tune ends a run's processes with the run. On 2 cores that is most of what a small search costs,
and most of what the test suite does (the in-process run tests: 78% of their CPU in Ray's worker processes).

Here one process (forkserver_zygote.py) imports torch and the trial side's libraries once, and the raylet's
command for a Python worker becomes `python -I -S forkserver_launcher.py default_worker.py ARGS`: the launcher
hands the command to the server, which forks a worker that runs Ray's default_worker.py exactly as Ray would,
with the launcher's environment, directory and streams. What is shared is what a fresh process would import
anyway; what Ray reads per process (its C++ settings) each worker reads itself, because the server never
imports Ray. The worker registers with the raylet under its own pid, so Ray's stops and kills reach it.

Where the server cannot start or has ended, each launcher execs the worker Ray would have started. Set
HPO_FORKSERVER=0 to start workers as Ray does.

Two lifetimes: an embedded Ray's server ends with the process that started it (the driver, which stops its Ray
first); a node's (`hpo node`, ray_support/node.py) outlives `ray start`, which exits once its processes run, and
ends with the node's raylet, whose pid it is given as soon as the raylet runs (`watch`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator.ray_support.forkserver_zygote import RAYLET_FLAG

SWITCH = "HPO_FORKSERVER"  # "0": Ray starts its workers as it always does
SOCKET_ENV = "HPO_FORKSERVER_SOCKET"  # the launcher's: where the server listens
PID_ENV = "HPO_FORKSERVER_PID"  # the launcher's: the server, so that a launcher never waits on a dead one
HERE = Path(__file__).resolve().parent
ZYGOTE = HERE / "forkserver_zygote.py"
LAUNCHER = HERE / "forkserver_launcher.py"


def _like_rays_processes() -> None:  # pragma: no cover (runs in the child, before exec)
    # as services.start_ray_process starts Ray's own: Ctrl-C in the terminal is the driver's to handle
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class ForkServer:
    """One server process, started before the Ray it serves and stopped after it: with the process that starts it,
    or, `for_node`, with the raylet it is then told of (`watch`)."""

    def __init__(self, *, for_node: bool = False) -> None:
        self.directory = tempfile.mkdtemp(prefix="hpo-forkserver-")
        self.socket = os.path.join(self.directory, "sock")
        self.raylet_file = os.path.join(self.directory, "raylet.pid")
        command = [sys.executable, str(ZYGOTE), self.socket]
        if for_node:
            command += [RAYLET_FLAG, self.raylet_file]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_like_rays_processes,
        )

    @property
    def environment(self) -> dict[str, str]:
        """What the raylet must inherit for its launchers to find the server."""
        return {SOCKET_ENV: self.socket, PID_ENV: str(self.process.pid)}

    def watch(self, raylet_pid: int) -> None:
        """The node's raylet runs as `raylet_pid`: the server ends when it does (not with this process)."""
        with open(self.raylet_file + ".new", "w") as fh:
            fh.write(str(raylet_pid))
        os.replace(self.raylet_file + ".new", self.raylet_file)

    @staticmethod
    def launcher_command() -> list[str]:
        """What replaces the Python interpreter in front of the raylet's command for a Python worker."""
        return [sys.executable, "-I", "-S", str(LAUNCHER)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start(*, for_node: bool = False) -> ForkServer | None:
    """A fork server for the Ray about to start here, or None where HPO_FORKSERVER=0 or it is not Linux."""
    if os.environ.get(SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return None
    return ForkServer(for_node=for_node)
