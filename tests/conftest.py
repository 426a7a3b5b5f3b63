"""Session fixtures: one real local Ray for the in-process tests, a real SeaweedFS; spec builders; the CLI run
in this process; and the fast tier's guard: a test not marked `slow` may not start Ray, a subprocess or a
server, nor sleep. `make test` runs two pytest workers (pytest-xdist): each is a session of its own, with its own
Ray and SeaweedFS (ports and credentials picked per process), so no test may assume it is alone on the machine."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import s3server
from xdist.scheduler import LoadScopeScheduling

ROOT = Path(__file__).resolve().parent.parent
# Before anything starts Ray: every process of the session (and every Ray worker) finds the test S3 server
# and its credentials through the standard AWS chain, and spools to a private directory.
os.environ.update(
    AWS_ACCESS_KEY_ID=s3server.ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
    AWS_ENDPOINT_URL_S3=s3server.ENDPOINT,
    AWS_REGION="us-east-1",
)
os.environ.setdefault("HPO_SPOOL_DIR", tempfile.mkdtemp(prefix="hpo-test-spool-"))
# A warm session a developer keeps up (`hpo up`, found through HPO_HOME) is never joined by a test's run.
os.environ["HPO_HOME"] = tempfile.mkdtemp(prefix="hpo-test-home-")
HPO = [sys.executable, "-m", "orchestrator.cli"]

BASE_SPEC = {
    "name": "t-job",
    "workload": "digits-mlp",
    "seed": 7,
    "search": {
        "algorithm": "random",
        "num_samples": 3,
        "max_concurrent": 2,
        "metric": "val_loss",
        "mode": "min",
        "space": {"lr": {"loguniform": [1.0e-3, 1.0e-1]}, "hidden": {"choice": [16, 32]}},
        "fixed": {"batch_size": 128},
    },
    "train": {"max_epochs": 3},
}


def spec_dict(**sections) -> dict:
    """BASE_SPEC with top-level keys replaced and nested mappings merged one level deep."""
    data = copy.deepcopy(BASE_SPEC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


PBT = {"type": "pbt", "perturbation_interval": 2, "quantile": 0.25, "resample_probability": 0.25}


def pbt_spec(storage: str, *, name: str = "pbt", max_epochs: int = 6, **search) -> dict:
    """A PBT search of the anneal workload (its best step size falls during training): a population of 4, two
    at a time, a step every 2 epochs; `search` overrides the search section's keys."""
    return spec_dict(
        name=name,
        workload="anneal",
        storage=storage,
        search={
            "algorithm": "random",
            "num_samples": 4,
            "max_concurrent": 2,
            "metric": "loss",
            "mode": "min",
            "space": {"lr": {"loguniform": [1.0e-3, 0.5]}},
            "fixed": {"noise": 0.5},
            **search,
        },
        scheduler=PBT,
        train={"max_epochs": max_epochs},
    )


def spec_file(path: Path, data: dict) -> Path:
    """The spec as a user writes it: a YAML file (yaml.safe_dump sorts keys; a search draws in the order the
    spec lists its hyperparameters, so a comparison run must read the same file)."""
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def in_trial_order(table):
    """A results table sorted by (trial, iteration): runs that wrote their rows in other orders compare equal."""
    return table.sort_by([("trial_id", "ascending"), ("iteration", "ascending")])


def kill_family(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process it started (Ray's own, whatever their process group): a test that ends,
    however it ends, leaves nothing running."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for process in [*family]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def paced_spec(name: str, storage, *, samples: int, concurrency: int, train: dict) -> dict:
    """A job of the paced workload (each epoch takes 1 s of wall time and no compute), FIFO, by loss: for tests
    that act mid-trial (kill a node, cut its cable, drain it) or must know what a trial costs."""
    return spec_dict(
        name=name,
        workload="tests.workloads_for_tests:paced",
        storage=str(storage),
        search={
            "metric": "loss",
            "mode": "min",
            "space": {"x": {"uniform": [0.0, 1.0]}},
            "num_samples": samples,
            "max_concurrent": concurrency,
            "fixed": {},
        },
        scheduler={"type": "fifo"},
        train=train,
    )


def command_of(process) -> list[str]:
    """A process's command line (a Ray process's first word is its title); empty for one that ended meanwhile."""
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def ray_workers(root_pid: int | None = None, *, title: str | None = None) -> list:
    """The Ray worker processes under `root_pid` (default: this process): those its raylets started and those
    a fork server forked for them (ray_support/forkserver.py: the raylet's child is then a launcher, which is
    left out). A worker runs Ray's default_worker.py until it registers, then Ray titles it `ray::...`
    (`ray::IDLE` while idle). With `title`, only those titled so."""
    import psutil

    workers = []
    for process in psutil.Process(root_pid).children(recursive=True):
        command = command_of(process)
        if not command:  # ended meanwhile
            continue
        first = command[0]
        if title is not None:
            if first == title:
                workers.append(process)
        elif (first.startswith("ray::") and first not in RAY_AGENTS) or any(
            word.endswith(("default_worker.py", "setup_worker.py")) for word in command[1:3]
        ):
            workers.append(process)
    return workers


def wait_for(predicate, what: str, timeout_s: float, *, every_s: float = 0.5):
    """Poll `predicate` until it returns something true, and return that; TimeoutError naming `what` after
    `timeout_s` (slow tests wait on a condition with a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
    return value


def trial_plan(epochs: int = 3, **overrides):
    """A TrialPlan for training in this process (no run, no store): digits-mlp by val_loss unless overridden."""
    from orchestrator.train.plan import TrialPlan

    base = dict(
        workload="digits-mlp",
        job_seed=0,
        fixed={},
        max_epochs=epochs,
        workers=1,
        use_gpu=False,
        cpus_per_worker=1.0,
        checkpoints_to_keep=2,
        metric="val_loss",
        mode="min",
        results_uri="",
        storage_options=None,
        train_storage="",
    )
    return TrialPlan(**{**base, **overrides})


@pytest.fixture(scope="session")
def ray_cluster():
    """A real embedded Ray shared by the in-process tests (4 logical CPUs so a DDP trial fits beside others),
    started through the same session every run uses, which stops it and restores the process at the end. Not a
    warm session (orchestrator.session): measured, the suite took 1,296 s with one against 1,098 s without.
    Tests follow each other at once on 2 busy cores, so the trial processes it starts after each run for the
    next only add work where the next test runs no in-process trials (DDP, a subprocess, no Ray)."""
    from orchestrator.ray_support.driver import DriverSession

    with DriverSession() as session:
        session.start_ray(num_cpus=4)
        yield


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback for the whole session."""
    server = s3server.WeedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


def hpo_env(env: dict | None = None) -> dict:
    """The environment run_hpo gives `hpo`: this process's, `env` over it, and this checkout importable."""
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def run_hpo(*args: str, cwd: Path | str = ROOT, timeout: float = 600, env: dict | None = None):
    return subprocess.run(
        [*HPO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=hpo_env(env)
    )


@pytest.fixture(autouse=True)
def _fast_tier_guard(request, monkeypatch):
    """`make test-fast` runs the tests not marked slow, in well under a minute: none of them may start Ray, a
    subprocess or a server, or sleep. Enforced here, so the tier cannot rot."""
    if request.node.get_closest_marker("slow"):
        return
    needs = {"ray_cluster", "s3"} & set(request.fixturenames)
    if needs:
        pytest.fail(f"{request.node.name} uses {sorted(needs)}: mark it @pytest.mark.slow")

    def refuse(what):
        def refused(*args, **kwargs):
            raise AssertionError(f"a test not marked slow may not {what}; mark it @pytest.mark.slow")

        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a subprocess (Ray, a server, the CLI)"))
    monkeypatch.setattr(time, "sleep", refuse("sleep (wait on a condition, in a slow test)"))


def hpo(capsys, *args: str) -> tuple[int, str, str]:
    """`hpo ARGS` in this process (the session's Ray, if a run needs one): (exit code, stdout, stderr)."""
    from orchestrator.cli import main

    capsys.readouterr()  # what came before is not this command's
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse refusing the arguments
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cli(*args, env={...})`: `hpo ARGS` in this process with those environment variables set for the call;
    returns a CompletedProcess (returncode, stdout, stderr), as run_hpo does for a real subprocess."""

    def call(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as patched:
            for name, value in (env or {}).items():
                patched.setenv(name, value)
            code, out, err = hpo(capsys, *args)
        return subprocess.CompletedProcess(list(args), code, out, err)

    return call


# The order modules start in (seconds each took in a full `make test` on 2026-12-07, in place). The waiting ones
# first (WAITING: they leave most of a core idle, 0.2-0.4 CPU-s a second of their wall, waiting on a real
# network's node verdicts, an autoscaler, a Jobs API, a silent endpoint, a daemon's Ray), one at a time on one
# worker (PairingScheduling); beside them, on the other, the modules that keep a core busy (DDP groups, a
# browser, the gpu-check rehearsal, PBT) and then the half-waiting ones (resume, ray_compat, run, stops:
# subprocess drivers and Ray starts, ~0.5-0.7 CPU-s a second), and the many short modules fill in at the end.
# Measured in place: busy beside waiting 568 s (183 idle core-s), the half-waiting ones beside the waiting 588 s
# (the run before); 601 s with 254 idle core-s the day before. The Makefile turns off xdist's own order
# (`--no-loadscope-reorder`; it orders by the number of tests, which put the one-test network module last: ~100
# s alone at the end). A module left out runs after these, in collection order.
MODULE_ORDER = (
    "tests/test_netns.py",  # 82 s, mostly waiting on a real network's node verdicts
    "tests/test_submit.py",  # 82
    "tests/test_autoscaling.py",  # 78
    "tests/test_s3_hostile.py",  # 58
    "tests/test_warm_session.py",  # 69
    "tests/test_custom_training.py",  # 62
    "tests/test_cli_run.py",  # 53
    "tests/test_dashboard.py",  # 52
    "tests/test_gpu_share.py",  # 47
    "tests/test_pbt.py",  # 45
    "tests/test_s3_run.py",  # 32
    "tests/test_resume.py",  # 115
    "tests/test_ray_compat.py",  # 90
    "tests/test_run.py",  # 81
    "tests/test_stops.py",  # 67
    "tests/test_jobs.py",  # 26
    "tests/test_disk_full.py",  # 17
)
WAITING = frozenset(
    {
        "tests/test_netns.py",
        "tests/test_submit.py",
        "tests/test_autoscaling.py",
        "tests/test_s3_hostile.py",
        "tests/test_warm_session.py",
    }
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        module = item.nodeid.split("::")[0]
        return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: the others keep their order


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` (the Makefile's), pairing the kinds of module: see PairingScheduling."""
    if config.getvalue("dist") == "loadscope":
        return PairingScheduling(config, log)
    return None


class PairingScheduling(LoadScopeScheduling):
    """xdist's loadscope (one worker runs all of a module's tests; the modules in MODULE_ORDER's order), except
    that at most one worker runs WAITING modules while others are left: a worker taking its next module takes
    the first waiting one if no other worker runs (or is about to run) one, else the first other one. Two
    waiting modules side by side left a core idle for minutes (the first 250 s of a 736 s suite ran at 70%
    busy, its second half at 95%); a waiting module beside busy ones lends them its core. Overrides xdist 3.8's
    `_assign_work_unit`, which hands a worker the queue's first module."""

    def _assign_work_unit(self, node) -> None:
        waiting_elsewhere = any(
            scope in WAITING
            for other, work in self.assigned_work.items()
            if other is not node
            for scope, tests in work.items()
            if not all(tests.values())  # a module it runs or is about to run
        )
        scope = next((s for s in self.workqueue if (s in WAITING) != waiting_elsewhere), None)
        if scope is not None:
            self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)
