"""A Ray cluster over a real network on one machine: a head and worker nodes, each in its own Linux network
namespace, joined by veth pairs to a bridge, so every byte between nodes crosses real interfaces (not loopback).

Needs root and `ip netns`. It talks only to addresses it created (one /24 of 10.231.0.0/16, chosen at random;
the bridge's own .254 lets this test process reach the head's dashboard), routes nothing outside it (the
namespaces have no default route; no NAT), and removes every namespace, veth and bridge it made when it ends,
also when the test fails (`with NetnsCluster(...)`). Processes are killed by namespace, so nothing it started
outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ray_internals import fast_connect_env
from rayhead import HPO_NODE  # each node starts as the cluster configs start theirs

GCS_PORT, DASHBOARD_PORT = 6379, 8265


def unavailable() -> str | None:
    """Why this machine cannot run the harness, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = f"hpoprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NetnsCluster:
    def __init__(self, root: Path, *, workers: int = 2, env: dict | None = None, timeout_s: float = 600):
        self.id = secrets.token_hex(2)  # interface names must stay within 15 characters
        self.prefix = f"10.231.{random.randint(1, 250)}"
        self.bridge = f"hb{self.id}"
        self.nodes = ["h"] + [f"w{i}" for i in range(1, workers + 1)]
        self.ns = {n: f"hpo{self.id}{n}" for n in self.nodes}
        self.veth = {n: f"v{self.id}{n}" for n in self.nodes}  # the bridge's end; "eth0" inside
        self.ip = {n: f"{self.prefix}.{i + 1}" for i, n in enumerate(self.nodes)}
        self.root, self.env = root, dict(env or {})
        self.token = "hpotok" + secrets.token_hex(16)
        self.generation = {n: 0 for n in self.nodes}
        self.logs: list = []
        self.deadline = time.monotonic() + timeout_s  # the harness's whole time, faults included

    @property
    def address(self) -> str:
        return f"{self.ip['h']}:{GCS_PORT}"

    # -- the network -----------------------------------------------------------------------------------------
    def __enter__(self) -> NetnsCluster:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self._forward(allow=True)
            for n in self.nodes:
                _ip("netns", "add", self.ns[n])
                _ip("-n", self.ns[n], "link", "set", "lo", "up")
                _ip("link", "add", self.veth[n], "type", "veth", "peer", "name", "eth0", "netns", self.ns[n])
                _ip("-n", self.ns[n], "addr", "add", f"{self.ip[n]}/24", "dev", "eth0")
                _ip("-n", self.ns[n], "link", "set", "eth0", "up")
                _ip("link", "set", self.veth[n], "master", self.bridge)
                _ip("link", "set", self.veth[n], "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for n in self.nodes:
            deadline = time.monotonic() + 15
            while self.kill(n) and time.monotonic() < deadline:  # until no process is left in it
                time.sleep(0.2)
            subprocess.run(["ip", "netns", "del", self.ns[n]], capture_output=True)
            # a namespace outlives its name while anything holds it; deleting our end removes the pair now
            subprocess.run(["ip", "link", "del", self.veth[n]], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self._forward(allow=False)
        for log in self.logs:
            log.close()
        for path in Path("/tmp").glob(f"rn{self.id}*"):
            shutil.rmtree(path, ignore_errors=True)

    def _forward(self, allow: bool) -> None:
        """Let frames cross this harness's bridge whatever the host's firewall says. A Docker engine that ran on
        this machine (make image-test) leaves iptables' FORWARD policy at DROP, and with the bridge netfilter
        module loaded (bridge-nf-call-iptables) bridged frames meet that policy: the nodes could not reach the
        head. One rule for our bridge only, removed at the end; without iptables there is nothing to allow."""
        if shutil.which("iptables") is None:
            return
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        subprocess.run(["iptables", "-I" if allow else "-D", *rule], capture_output=True, timeout=30)

    def link(self, node: str, up: bool) -> None:
        """Cut or restore `node`'s cable (its veth's end at the bridge)."""
        _ip("link", "set", self.veth[node], "up" if up else "down")

    def leftovers(self) -> list[str]:
        """Namespaces and links of this harness that still exist (none after __exit__)."""
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        return [
            x for x in [*self.ns.values(), self.bridge, *self.veth.values()] if x in names or f" {x}" in links
        ]

    # -- Ray ---------------------------------------------------------------------------------------------------
    def start(self, node: str, *, cpus: int = 1, resources: dict | None = None) -> None:
        """Start (or restart, as a replacement would come up) Ray on `node`: the head, or a worker joining it."""
        self.generation[node] += 1
        temp = f"/tmp/rn{self.id}{node}{self.generation[node]}"  # short: Ray's unix sockets live under it
        args = [
            *HPO_NODE,
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={self.ip[node]}",
            f"--num-cpus={cpus}",
            f"--temp-dir={temp}",
        ]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        if node == "h":
            args += [
                "--head",
                f"--port={GCS_PORT}",
                "--include-dashboard=true",
                f"--dashboard-host={self.ip['h']}",
                f"--dashboard-port={DASHBOARD_PORT}",
            ]
        else:
            args.append(f"--address={self.address}")
        log = open(self.root / f"ray-{node}-{self.generation[node]}.log", "ab")
        self.logs.append(log)
        subprocess.Popen(
            self.exec_args(node, args),
            env=self.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def environ(self) -> dict:
        # token auth, as Ray 2.60's default; a node joining an explicit address needs the mode said. The embedded
        # heads' local connect retries too (ray_compat.FAST_CONNECT says why).
        env = dict(
            os.environ, RAY_AUTH_TOKEN=self.token, RAY_AUTH_MODE="token", **fast_connect_env(), **self.env
        )
        env.pop("RAY_ADDRESS", None)
        return env

    def exec_args(self, node: str, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node], *args]

    def kill(self, node: str) -> int:
        """SIGKILL every process in `node`'s namespace (a node that vanishes); returns how many."""
        pids = subprocess.run(
            ["ip", "netns", "pids", self.ns[node]], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        return len(pids)

    def alive_nodes(self) -> list[dict]:
        try:
            data = self.get("/api/v0/nodes?limit=100&detail=true")
        except OSError:
            return []
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def get(self, path: str):
        request = urllib.request.Request(
            f"http://{self.ip['h']}:{DASHBOARD_PORT}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_for(self, predicate, what: str, timeout_s: float = 180):
        deadline = min(time.monotonic() + timeout_s, self.deadline)
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.root}")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
