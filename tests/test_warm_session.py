"""Warm sessions (ray_support/warm.py): `orchestrator.session()` in a process, `hpo up` between commands. After
a run, the trial processes of the next one are started ahead, and its trials train in them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import HPO, ROOT, command_of, hpo_env, ray_workers, run_hpo, spec_dict, spec_file, wait_for


@pytest.mark.slow
def test_the_next_run_of_a_warm_session_trains_in_processes_started_after_the_last(tmp_path):
    """In a process of its own, `with orchestrator.session():` (a notebook's habit): after a run, the session
    starts the next run's trial processes; once they are ready, the next run's 2 trials train in them (each
    leaves a file named by its process id; the second may follow the first in its process). After the session, no Ray and no child process is left."""
    code = (
        "import json, os, sys, psutil, ray, orchestrator\n"
        "from conftest import wait_for\n"
        "from test_warm_session import _ready_workers\n"
        "spec, pids = orchestrator.parse_spec(json.loads(sys.argv[1])), sys.argv[2]\n"
        "with orchestrator.session(num_cpus=3):\n"
        "    first = orchestrator.run(spec, progress=lambda line: None)\n"
        "    trained_first = set(os.listdir(pids))\n"
        "    warm = wait_for(lambda: len(_ready_workers()) >= 2 and _ready_workers(), 'warm processes', 120)\n"
        "    second = orchestrator.run(spec, progress=lambda line: None)\n"
        "    trained = {int(p) for p in set(os.listdir(pids)) - trained_first}\n"
        "    print(first.statuses, second.statuses, len(trained) >= 1, trained <= warm)\n"
        "gone = lambda: not psutil.Process().children(recursive=True)\n"
        "print(ray.is_initialized(), wait_for(gone, 'no process of the session left', 30))\n"
    )
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(_pid_spec(tmp_path, pids)), str(pids)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["{'completed': 2} {'completed': 2} True True", "False True"], (
        proc.stdout
    )


def _ready_workers() -> set[int]:
    """The pids of this process's Ray's registered idle workers (Ray titles them ray::IDLE)."""
    return {w.pid for w in ray_workers(title="ray::IDLE")}


def _title(process) -> str:
    """A process's title (its command line's first word), or "" for one that has ended meanwhile (a zombie an
    ended trial left until its raylet reaps it)."""
    return (command_of(process) or [""])[0]


def _two_trials(tmp_path, name: str, workload: str, fixed: dict, epochs: int) -> dict:
    """2 trials of `workload`, 2 at once, results under tmp_path/name."""
    return spec_dict(
        name=name,
        workload=f"tests.workloads_for_tests:{workload}",
        storage=str(tmp_path / name),
        search={
            "metric": "loss",
            "mode": "min",
            "space": {"x": {"uniform": [0.0, 1.0]}},
            "num_samples": 2,
            "max_concurrent": 2,
            "fixed": fixed,
        },
        train={"max_epochs": epochs},
    )


def _pid_spec(tmp_path, pids) -> dict:
    """The writes_pid workload: each trial leaves a file named by its process id in `pids`."""
    return _two_trials(tmp_path, "warm", "writes_pid", {"pid_dir": str(pids)}, 2)


def _warm_processes(daemon_pid: int) -> set[int]:
    """The idle workers of the Ray that the `hpo up` daemon runs (Ray titles a registered idle worker
    ray::IDLE)."""
    return {w.pid for w in ray_workers(daemon_pid, title="ray::IDLE")}


def _held_spec(tmp_path, marker) -> dict:
    """The paced workload, each trial waiting for `marker` before its first epoch: a run that lasts until it is
    stopped."""
    return _two_trials(
        tmp_path, "held", "paced", {"pace_s": 0.2, "hold_marker": str(marker), "hold_from": 0}, 3
    )


def _status(run_dir) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


@pytest.mark.slow
def test_hpo_up_serves_runs_from_its_directory_with_warm_processes_and_hpo_down_leaves_nothing(tmp_path):
    """`hpo up`'s daemon drives the runs that `hpo run` and `hpo resume` started in its directory hand it
    (ray_support/handoff.py): the command imports no Ray, relays the run's output, exit code and Ctrl-C; the
    command's environment reaches the run (HPO_STOP_GRACE_S); while the daemon drives one run, another drives
    itself on the session's Ray; `hpo down` during a run winds it down, resumable, and leaves nothing."""
    import psutil

    home = tmp_path / "home"
    # A variable Ray Tune copies into every trial actor, in the shell of both `hpo up` and `hpo run` (in the full
    # suite one leaked into the pytest worker's environment, from a DDP reproduce in process, and every run's
    # trials then started new processes: the warm session had recorded only Tune's defaults)
    env = {"HPO_HOME": str(home), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = _pid_spec(tmp_path, pids)
    job = spec_file(tmp_path / "job.yaml", spec)
    up = run_hpo("up", "--num-cpus", "3", env=env)
    assert up.returncode == 0 and "warm session up" in up.stderr, up.stderr
    state = json.loads((home / "up.json").read_text())
    try:
        assert stat.S_IMODE(os.stat(state["token_path"]).st_mode) == 0o600
        again = run_hpo("up", env=env)
        assert again.returncode == 2 and again.stderr.count("\n") == 1 and "up already" in again.stderr
        # a first run, handed to the daemon by a command that never imports Ray (nor pyarrow, torch, ...); then
        # the processes its end started for the next one (kept warm) are ready, and the next run's trials train
        # in them
        probe = (
            "import sys; from orchestrator.cli import HEAVY_LIBRARIES, main; code = main(sys.argv[1:]); "
            "print('loaded:', sorted(m for m in HEAVY_LIBRARIES if m in sys.modules)); sys.exit(code)"
        )
        first = subprocess.run(
            [sys.executable, "-c", probe, "run", str(job)],
            cwd=ROOT,
            env=hpo_env(env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.returncode == 0 and "its process (pid" in first.stderr, first.stderr[-2000:]
        assert first.stdout.splitlines()[-1] == "loaded: []" and "results_uri: " in first.stdout, first.stdout
        assert "driving: hpo run" in (home / "up.log").read_text()
        before = set(os.listdir(pids))
        warm = wait_for(
            lambda: len(_warm_processes(state["pid"])) >= 2 and _warm_processes(state["pid"]),
            "warm processes",
            120,
        )
        ran = run_hpo("run", str(job), env=env)
        assert ran.returncode == 0 and "joining the warm session" in ran.stderr, ran.stderr[-2000:]
        trained = {int(p) for p in set(os.listdir(pids)) - before}
        # 1 or 2 of them: a trial may follow the other in its process
        assert trained and trained <= warm, (trained, warm)
        # from another directory (where its workloads may not be), a run starts a Ray of its own
        elsewhere = run_hpo("run", str(job), cwd=tmp_path, env=env)
        assert elsewhere.returncode == 0 and "starts a Ray of its own" in elsewhere.stderr, elsewhere.stderr[
            -2000:
        ]

        # a run that waits to be stopped; Ctrl-C at its command winds it down in the daemon, within the
        # command's grace period (1 s here against the default 20 s), and the command exits 130
        marker = tmp_path / "go"
        held_job = spec_file(tmp_path / "held.yaml", _held_spec(tmp_path, marker))
        stop_env = hpo_env({**env, "HPO_STOP_GRACE_S": "1"})
        held = subprocess.Popen(
            [*HPO, "run", str(held_job)],
            cwd=ROOT,
            env=stop_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        run_dir = wait_for(
            lambda: next((tmp_path / "held").glob("*/*/run.json"), None), "the held run", 120
        ).parent
        # meanwhile the daemon is busy: another run drives itself on the session's Ray
        busy = run_hpo("run", str(job), env=env)
        assert busy.returncode == 0 and "driving another run" in busy.stderr, busy.stderr[-2000:]
        held.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = (text.decode() for text in held.communicate(timeout=120))
        took = time.monotonic() - sent
        assert held.returncode == 130, err[-2000:]
        assert "interrupted by SIGINT" in err and "(at most 1s)" in err, err[-2000:]
        # its trials never report: they are ended once the 1 s is over (ray_compat.silent_trials_ended_at_once),
        # not 10 s later, when Ray Tune would kill them itself (11-12 s from the signal to the exit, measured)
        assert took < 8, f"{took:.1f} s from Ctrl-C to the exit"
        assert f"hpo resume {run_dir}" in err and _status(run_dir) == "interrupted"
        # `hpo resume` is handed to the daemon too; `hpo down` while the daemon drives it winds it down
        resumed = subprocess.Popen(
            [*HPO, "resume", str(run_dir)],
            cwd=ROOT,
            env=stop_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: _status(run_dir) == "running", "the resumed run", 120)
    finally:
        down = run_hpo("down", env=env)
    assert down.returncode == 0 and "stopped" in down.stderr, down.stderr
    assert (
        not psutil.pid_exists(state["pid"]) or psutil.Process(state["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if state["session_dir"] in " ".join(p.info["cmdline"] or [])
    ]
    assert not left and not os.path.exists(state["session_dir"]) and not (home / "up.json").exists()
    assert not os.path.exists(state["token_path"])
    assert "no warm session was up" in run_hpo("down", env=env).stderr
    out, err = (text.decode() for text in resumed.communicate(timeout=60))
    assert resumed.returncode == 143 and "its process (pid" in err, err[-2000:]
    assert _status(run_dir) == "interrupted" and f"hpo resume {run_dir}" in err
