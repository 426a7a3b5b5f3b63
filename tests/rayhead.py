"""A real Ray head for tests (`hpo node --head --block`: Ray's `ray start`, its workers forked from a fork server, as
the cluster configs start a node), with token authentication, on free ports.

It runs in its own process group so the tests can stop exactly it (never `ray stop`, which would kill every
Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ray_internals import fast_connect_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HPO_NODE = (sys.executable, "-m", "orchestrator.cli", "node")


class RayHead:
    def __init__(
        self,
        root: Path,
        num_cpus: int = 2,
        extra_args: tuple = (),
        extra_env: dict | None = None,
        command: tuple = HPO_NODE,
    ):
        self.token = "hpotok" + secrets.token_hex(16)
        self.extra_args, self.extra_env = list(extra_args), dict(extra_env or {})
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        self.root, self.num_cpus, self.command = root, num_cpus, list(command)
        self.root.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets live under --temp-dir and must stay under 108 bytes: keep it short.
        self.ray_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> None:
        bin_dir = str(Path(sys.executable).parent)
        ports = {
            "port": self.gcs_port,
            "dashboard-port": self.dashboard_port,
            "dashboard-agent-listen-port": free_port(),
            "dashboard-agent-grpc-port": free_port(),
            "metrics-export-port": free_port(),
            "runtime-env-agent-port": free_port(),
            "ray-client-server-port": free_port(),
            "node-manager-port": free_port(),
            "object-manager-port": free_port(),
        }
        env = dict(
            os.environ,
            RAY_AUTH_TOKEN=self.token,
            PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
            **fast_connect_env(),  # the embedded heads' local connect retries (ray_compat.FAST_CONNECT says why)
            **self.extra_env,
        )
        env.pop("RAY_ADDRESS", None)
        args = [
            *self.command,
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--num-cpus={self.num_cpus}",
            "--include-dashboard=true",
            f"--temp-dir={self.ray_tmp}",
            *[f"--{k}={v}" for k, v in ports.items()],
            *self.extra_args,
        ]
        self.log = open(self.root.parent / "ray-head.log", "ab")
        deadline = time.monotonic() + timeout_s
        # Ray 2.60's `ray start` gives its raylet a fixed 30 s to register with the GCS ("The current node timed
        # out during startup"), which a 2-core machine running the other pytest worker's cluster can exceed (`hpo
        # node` gives it 90 s): the head then exits after its Jobs API has answered. Ready means the head node is
        # alive, and a head that exited while starting is started once more.
        for attempt in (1, 2):
            self.proc = subprocess.Popen(
                args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
            )
            while not self._ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    break
                time.sleep(1)
            else:
                return
            if time.monotonic() > deadline or attempt == 2:
                raise RuntimeError(f"Ray head did not start; see {self.root.parent / 'ray-head.log'}")

    def _ready(self) -> bool:
        """The Jobs API answers and the head node is alive in the GCS (the dashboard answers before the raylet
        has registered, and a raylet that never registers takes the head down with it)."""
        try:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            nodes = self.get("/api/v0/nodes")["data"]["result"]["result"]
            return any(node.get("state") == "ALIVE" for node in nodes) and self.get("/api/jobs/") is not None
        except Exception:
            return False

    def get(self, path: str):
        import json

        request = urllib.request.Request(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """SIGINT: `ray start --block` then stops its processes and exits (~4 s measured; it sits out SIGTERM),
        then SIGKILL for anything of the group still there."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its children, if the head left any
        self.proc = None
