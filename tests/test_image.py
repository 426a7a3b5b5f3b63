"""`make image-test`: the Dockerfile built and run on a real Docker engine.

- The base is Debian bookworm made from Debian's packages (debootstrap, then `docker import`): here no image
  registry but the package mirrors answers. The build takes it as BASE_IMAGE.
- torch comes from the index the build is told (TORCH_INDEX_URL). Here that is a PEP 503 index this test serves
  on the docker bridge: torch's CPU wheel from this machine's pip, every other project redirected to PyPI (PyPI's
  torch is the CUDA build, GBs). pip trusts this machine's CA bundle through a build secret, never a layer.
- (a) `hpo run` of the demo job in a container, as the image's non-root user, results to a mounted folder.
- (b) A Ray cluster of three containers from the image (a head and 2 workers on a docker network, token auth):
  `hpo submit` from the host sends a job of 2-worker DDP trials, results to SeaweedFS on the host.
- (c) A rebuild after a change to orchestrator/ reuses every layer before our code's.

The figures (the build cold and warm, the image's size) are printed. Only `make image-test` runs this module
(marked `image`; pyproject's addopts leave it out of every other run). Without a Docker engine, one this
process may start (root, `dockerd` installed) included, it skips with one line saying so. A dockerd it starts
is stopped at the end, and the firewall settings dockerd changes are put back (tests/netns.py says why).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_hpo, spec_dict
from s3server import BUCKET, WeedServer, _free_port

from orchestrator.results import load_results, load_trials
from orchestrator.storage.s3 import S3Options

pytestmark = [pytest.mark.slow, pytest.mark.image]

TAG = "hpo-orchestrator:image-test"
BASE = "hpo-image-test-base:bookworm"
# Debian's docker.io client (20.10) builds with BuildKit's secrets when DOCKER_BUILDKIT=1; newer clients need
# the buildx plugin for that, which Debian's packages do not have.
CLIENT = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or "docker"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's ca-certificates: this machine's trust
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def docker(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None, **kwargs):
    done = subprocess.run(
        [CLIENT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "1", **(env or {})},
        **kwargs,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {(done.stderr or done.stdout)[-3000:]}")
    return done


def _answers() -> bool:
    try:
        return docker("info", check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", *args], capture_output=True, text=True, timeout=30)


def engine_missing() -> str | None:
    """Why no Docker engine can be had here (none answers, and this process may not start one), or None."""
    if shutil.which(CLIENT) is None and not os.path.exists(CLIENT):
        return "image-test: no docker client here (apt-get install docker.io); the image was not built"
    if not _answers() and (os.geteuid() != 0 or shutil.which("dockerd") is None):
        return (
            "image-test: no Docker engine runs here and this user cannot start one; the image was not built"
        )
    return None


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A Docker engine: the one running, else a dockerd this process starts (and stops, restoring the firewall
    settings it changed), else a skip that says why."""
    if why := engine_missing():
        pytest.skip(why)
    if _answers():
        yield
        return
    policy = re.search(r"-P FORWARD (\w+)", _iptables("-S", "FORWARD").stdout or "")
    bridge_nf = BRIDGE_NF.read_text().strip() if BRIDGE_NF.exists() else None
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        # dockerd sets FORWARD's policy to DROP and turns bridge-nf-call-iptables on; both outlive it
        if policy:
            _iptables("-P", "FORWARD", policy.group(1))
        if bridge_nf is not None:
            with contextlib.suppress(OSError):
                BRIDGE_NF.write_text(bridge_nf)


@pytest.fixture(scope="module")
def base(engine, tmp_path_factory) -> str:
    """Debian bookworm with Python 3.11 and its venv, made from Debian's packages (kept for later runs)."""
    if docker("image", "inspect", BASE, check=False).returncode == 0:
        return BASE
    if shutil.which("debootstrap") is None:
        pytest.skip("image-test: needs debootstrap (apt-get install debootstrap) to make its base image")
    rootfs = tmp_path_factory.mktemp("rootfs")
    began = time.monotonic()
    made = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates",
            "bookworm",
            str(rootfs),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    docker("import", "-", BASE, stdin=tar.stdout, timeout=600)
    assert tar.wait() == 0
    FIGURES["base_image_made_s"] = round(time.monotonic() - began, 1)
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE


def _gateway(network: str) -> str:
    """The host's address on a docker network (containers reach the host there). Docker 20.10 does not name the
    default bridge's gateway in `network inspect`: that one is docker0's own address."""
    said = docker("network", "inspect", network, "-f", "{{(index .IPAM.Config 0).Gateway}}").stdout.strip()
    if not said and network == "bridge":
        listed = subprocess.run(["ip", "-o", "-4", "addr", "show", "docker0"], capture_output=True, text=True)
        said = re.search(r"inet ([\d.]+)/", listed.stdout).group(1)
    assert said, f"no gateway on docker network {network}"
    return said


def _torch_wheel(version: str) -> Path | None:
    """This machine's torch CPU wheel, from pip's find-links (where `make setup` takes torch from), if any."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    folders = [
        Path(p)
        for line in listed.splitlines()
        if "find-links" in line
        for p in line.split("=", 1)[1].strip("'\" ").split()
    ]
    for folder in folders:
        found = sorted(folder.glob(f"torch-{version}+cpu-*.whl"))
        if found:
            return found[0]
    return None


class _Index(http.server.ThreadingHTTPServer):
    """A PEP 503 index: torch from a wheel on this disk; any other project redirected to PyPI's own page."""

    def __init__(self, address, wheel: Path):
        self.wheel = wheel
        self.digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        super().__init__(address, _IndexHandler)


class _IndexHandler(http.server.BaseHTTPRequestHandler):
    server: _Index

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        wheel, path = self.server.wheel, urllib.parse.unquote(self.path)
        if path.rstrip("/") == "/simple/torch":
            body = f'<a href="/files/{wheel.name}#sha256={self.server.digest}">{wheel.name}</a>'.encode()
            self._send(200, body, "text/html")
        elif path == f"/files/{wheel.name}":
            self.send_response(200)
            self.send_header("Content-Length", str(wheel.stat().st_size))
            self.end_headers()
            with open(wheel, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)
        elif self.path.startswith("/simple/"):
            self.send_response(302)
            self.send_header("Location", "https://pypi.org" + self.path)
            self.end_headers()
        else:
            self._send(404, b"not here", "text/plain")

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # the build's log says what pip fetched
        pass


@contextlib.contextmanager
def _torch_index(torch_version: str):
    """The TORCH_INDEX_URL for the build: this machine's wheel served on the docker bridge, or the Dockerfile's
    default (the CPU index at download.pytorch.org) where there is none."""
    wheel = _torch_wheel(torch_version)
    if wheel is None:
        yield None
        return
    gateway = _gateway("bridge")
    server = _Index((gateway, 0), wheel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{gateway}:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def _context(into: Path) -> Path:
    """The build context: the files git tracks (a copy, so the rebuild can change one)."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def _build(context: Path, base_image: str, index: str | None, log: Path) -> tuple[float, dict[str, bool]]:
    """(seconds, {step: cached}) of one build, in the Dockerfile's order; a step is BuildKit's
    '[k/n] INSTRUCTION' line (the plain progress prints steps as they run, not in order)."""
    args = ["build", "--progress=plain", "-t", TAG, "--build-arg", f"BASE_IMAGE={base_image}"]
    if index:  # served over plain http: pip trusts it only when told
        host = index.split("//", 1)[1].split(":", 1)[0]
        args += ["--build-arg", f"TORCH_INDEX_URL={index}", "--build-arg", f"PIP_TRUSTED_HOST={host}"]
    if CA_BUNDLE.exists():
        args += ["--secret", f"id=pip_cert,src={CA_BUNDLE}"]
    began = time.monotonic()
    done = docker(*args, str(context), timeout=1800, check=False)
    seconds = time.monotonic() - began
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    steps: dict[str, tuple[int, str]] = {}  # BuildKit's vertex number -> (k, the step)
    cached: set[str] = set()
    for line in (done.stdout + done.stderr).splitlines():
        if m := re.match(r"#(\d+) \[\s*(\d+)/(\d+)\] (.*)", line):
            steps[m.group(1)] = (int(m.group(2)), f"[{m.group(2)}/{m.group(3)}] {m.group(4)}")
        elif m := re.match(r"#(\d+) CACHED", line):
            cached.add(m.group(1))
    return seconds, {
        step: number in cached for number, (_, step) in sorted(steps.items(), key=lambda i: i[1])
    }


FIGURES: dict = {}


@pytest.fixture(scope="module")
def image(base, tmp_path_factory):
    """The image, built from a copy of the tracked files; then (c): rebuilt after a change to our code."""
    from dockerfile_parse import DockerfileParser

    torch_version = DockerfileParser(path=str(ROOT / "Dockerfile")).args["TORCH_VERSION"]
    work = tmp_path_factory.mktemp("build")
    context = _context(work / "context")
    with _torch_index(torch_version) as index:
        seconds, steps = _build(context, base, index, work / "first.log")
        FIGURES["first_build_s"] = round(seconds, 1)
        FIGURES["first_build_cached_steps"] = sum(steps.values())
        FIGURES["image_size_mb"] = round(int(docker("image", "inspect", TAG, "-f", "{{.Size}}").stdout) / 1e6)
        init = context / "orchestrator" / "__init__.py"
        init.write_text(init.read_text() + "\n# make image-test: a change to our code\n")
        seconds, steps = _build(context, base, index, work / "rebuild.log")
    FIGURES["rebuild_after_a_code_change_s"] = round(seconds, 1)
    FIGURES["rebuild_steps"] = {
        step[:70]: ("cached" if hit else "built") for step, hit in list(steps.items())[1:]
    }
    # every step before our code's (the base, the user and venv, torch, Ray and the rest) comes from the cache
    order = list(steps)
    ours = next(i for i, step in enumerate(order) if "COPY orchestrator" in step)
    assert ours >= 5 and all(steps[step] for step in order[1:ours]), FIGURES["rebuild_steps"]
    assert not steps[order[ours]], "the rebuild reused the layer of the changed code"
    print("\nimage-test figures:", json.dumps(FIGURES, indent=1))
    return TAG


def test_the_image_keeps_no_secret_and_runs_as_its_non_root_user(image):
    # BuildKit leaves the secret's mount point, empty; no file anywhere is the secret
    script = "id -u; hpo --help | head -1; ls -A /run/secrets | wc -l; find / -xdev -name pip_cert 2>/dev/null | wc -l"
    said = docker("run", "--rm", image, "sh", "-c", script).stdout.split("\n")
    assert said[0] == "1000" and said[1].startswith("usage: hpo") and said[2:4] == ["0", "0"], said
    history = docker("history", "--no-trunc", image).stdout
    assert "BEGIN CERTIFICATE" not in history


def test_the_demo_job_runs_in_a_container_as_the_non_root_user_into_a_mounted_folder(image, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    out.chmod(0o777)  # the container's user (uid 1000) writes here
    done = docker(
        "run",
        "--rm",
        "--shm-size=1g",
        "-v",
        f"{out}:/results",
        image,
        "hpo",
        "run",
        "/opt/hpo/jobs/digits-asha.yaml",
        "--storage",
        "/results",
        "--output",
        "json",
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    uri = summary["results_uri"]
    assert uri.startswith("/results/"), uri
    host_uri = str(out / uri.removeprefix("/results/"))
    trials = load_trials(host_uri).to_pylist()
    spec = yaml.safe_load((ROOT / "jobs" / "digits-asha.yaml").read_text())
    assert len(trials) == spec["search"]["num_samples"], trials
    assert {t["status"] for t in trials} <= {"completed", "stopped_early"}, trials
    assert load_results(host_uri).num_rows >= len(trials)
    owners = {p.stat().st_uid for p in Path(host_uri).rglob("*")}
    assert owners == {1000}, owners


@pytest.fixture
def cluster(image, tmp_path):
    """A head and two workers from the image on a docker network of their own, token auth; SeaweedFS on the
    host, on that network's gateway. Yields (dashboard URL, token, S3 endpoint, env for the host's commands)."""
    name = f"hpo-it-{secrets.token_hex(3)}"
    docker("network", "create", name)
    containers: list[str] = []
    weed = None
    try:
        gateway = _gateway(name)
        weed = WeedServer(tmp_path / "weed", ip=gateway, s3_port=_free_port(gateway))
        weed.start()
        token = secrets.token_hex(16)
        # secrets travel in the docker client's environment (`-e NAME`), never in its arguments
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "AWS_ENDPOINT_URL_S3": weed.endpoint,
            "AWS_REGION": "us-east-1",
        }
        passed = [a for key in (*env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") for a in ("-e", key)]
        head = f"{name}-head"

        def node(container: str, *ray_args: str, publish: tuple[str, ...] = ()) -> None:
            docker(
                "run", "-d", "--name", container, "--hostname", container, "--network", name,
                "--shm-size=1g", *publish, *passed, image,
                "ray", "start", "--block", "--disable-usage-stats", *ray_args,
                env=env,
            )  # fmt: skip
            containers.append(container)

        node(
            head,
            "--head",
            "--port=6379",
            "--num-cpus=1",
            "--dashboard-host=0.0.0.0",
            publish=("-p", "127.0.0.1::8265"),
        )
        for i in (1, 2):
            node(f"{name}-w{i}", f"--address={head}:6379", "--num-cpus=2", '--resources={"w": 1}')
        url = "http://" + docker("port", head, "8265").stdout.split()[0]

        def alive() -> list[dict]:
            request = urllib.request.Request(
                f"{url}/api/v0/nodes?limit=10&detail=true", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    nodes = json.loads(response.read())["data"]["result"]["result"]
            except OSError:
                return []
            return [n for n in nodes if n["state"] == "ALIVE"]

        deadline = time.monotonic() + 180
        while len(alive()) < 3:
            assert time.monotonic() < deadline, docker("logs", head, check=False).stdout[-3000:]
            time.sleep(1)
        yield url, token, weed.endpoint, env, alive()
    finally:
        if containers:
            docker("rm", "-f", *containers, check=False)
        docker("network", "rm", name, check=False)
        if weed:
            weed.stop()


def test_a_cluster_of_three_containers_runs_a_submitted_job_of_ddp_trials_into_seaweedfs(cluster, tmp_path):
    url, token, endpoint, env, nodes = cluster
    spec = spec_dict(
        name="image-ddp",
        search={"num_samples": 2, "max_concurrent": 1},
        train={"max_epochs": 2, "workers": 2, "cpus_per_worker": 1, "resources_per_worker": {"w": 1}},
    )
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = run_hpo(
        "submit", str(path), "--address", url, "--storage", f"s3://{BUCKET}/image-test", "--follow",
        env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert token not in done.stdout + done.stderr
    uri = next(
        line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("results_uri: ")
    )
    options = S3Options(endpoint_url=endpoint)
    trials = load_trials(uri, options=options).to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"], trials
    rows = load_results(uri, options=options).to_pylist()
    assert sorted((r["trial_id"], r["iteration"]) for r in rows) == [
        (t["trial_id"], i) for t in sorted(trials, key=lambda t: t["trial_id"]) for i in (1, 2)
    ]
    # each trial's ranks need a "w" each: one rank on each worker container; rank 0's node is one of them
    workers = {n["node_id"] for n in nodes if n.get("resources_total", {}).get("w")}
    assert len(workers) == 2 and all(t["node_id"] in workers for t in trials), (workers, trials)


if __name__ == "__main__":  # make image-test asks first, to say in one line why it cannot run
    if why := engine_missing():
        print(why)
        sys.exit(1)
