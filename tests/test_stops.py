"""Stopped is not finished: Ctrl-C (to `hpo run` or to its whole process group), SIGTERM, and a second Ctrl-C
each leave a run that `hpo resume` continues, and the tables of the stopped run agree with each other.

Each test sends its signal from the job's own progress output (a later trial's early epoch; the wind-down
begun), so the signal lands mid-run however loaded the machine is; `hpo stop` on a submitted job is in
test_submit.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import psutil
import pytest
from conftest import HPO, ROOT, hpo, in_trial_order, kill_family, paced_spec, spec_dict, spec_file
from contract import check_contract, deterministic_rows

from orchestrator.api import run
from orchestrator.results import RunSummary, load_results, load_trials
from orchestrator.results.summary import ledger_totals
from orchestrator.spec import load_spec
from orchestrator.storage import open_store

pytestmark = pytest.mark.slow

WINDING_DOWN = "press Ctrl-C again to stop at once"
LATER_TRIAL_EARLY_EPOCH = re.compile(r"\] trial_000[2-5] epoch   [12]/6 ")

# Real training (digits), random search: whole-job deterministic, so a resumed run must equal an uninterrupted one.
JOB = dict(
    name="stops",
    seed=11,
    search={"num_samples": 6, "max_concurrent": 2},
    train={"max_epochs": 6},
)


def start_run(spec_path) -> subprocess.Popen:
    """`hpo run` in a process group of its own, as a terminal would start it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [*HPO, "run", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def read_until(proc: subprocess.Popen, done, lines: list[str]) -> None:
    """Read the job's progress lines into `lines` until `done(lines)`; fail if the job ended first."""
    for line in proc.stderr:
        lines.append(line)
        if done(lines):
            return
    raise AssertionError("the job ended before the test could stop it:\n" + "".join(lines[-40:]))


def check_closed_run(uri: str, status: str) -> dict:
    """A stopped run's tables agree: run.json's status and counts, no trial `running`, every trial's iterations
    equal to its stored rows, every (trial, iteration) once, and one ledger total. Returns run.json."""
    info = json.loads(open_store(uri).read_bytes("run.json"))
    assert info["status"] == status, info
    rows, trials = load_results(uri), load_trials(uri).to_pylist()
    keys = list(zip(rows["trial_id"].to_pylist(), rows["iteration"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == info["rows"]
    assert len(trials) == info["trials"]
    per_trial = {t: sum(1 for k in keys if k[0] == t) for t, _ in keys}
    for record in trials:
        assert record["status"] in ("completed", "stopped_early", "interrupted"), record
        assert record["iterations"] == per_trial.get(record["trial_id"], 0), record
    assert "interrupted" in {r["status"] for r in trials}  # the test stopped it with trials running
    # one ledger: run.json's totals are what trials.parquet's entries add up to, as `hpo results show` adds them
    assert info["ledger"] == ledger_totals(trials, priced=False)
    return info


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tmp_path_factory):
    where = tmp_path_factory.mktemp("clean")
    spec = load_spec(spec_file(where / "job.yaml", spec_dict(**JOB)))
    summary = run(spec, storage=str(where / "runs"), progress=lambda line: None)
    return summary, load_results(summary.results_uri)


@pytest.mark.parametrize(
    "how, exit_code",
    [("SIGINT", 130), ("SIGINT to the process group", 130), ("SIGTERM", 143)],
)
def test_a_signal_winds_the_run_down_and_resume_ends_equal_to_an_uninterrupted_run(
    how, exit_code, uninterrupted, tmp_path, capsys
):
    spec_path = spec_file(tmp_path / "job.yaml", spec_dict(storage=str(tmp_path / "runs"), **JOB))
    proc = start_run(spec_path)
    lines: list[str] = []
    try:
        uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
        # a trial that started after the first two at its first or second of 6 epochs: the signal lands mid-run,
        # with a trial running (a trial's end is announced once its record is stored, so after later lines)
        read_until(proc, lambda lines: LATER_TRIAL_EARLY_EPOCH.search(lines[-1]), lines)
        signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
        (os.killpg if "group" in how else os.kill)(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        kill_family(proc)
    err = "".join(lines) + err
    assert proc.returncode == exit_code, err[-3000:]
    assert "Traceback" not in err and "Tuner.restore" not in err and "SIGTERM received" not in err
    assert f"interrupted by {how.split()[0]}: no new trial starts" in err
    assert out.splitlines()[0].startswith("interrupted after "), out
    assert f"continue it with `hpo resume {uri}`" in err
    info = check_closed_run(uri, "interrupted")
    spent = re.search(r"spent: (\S+) CPU-hours", out).group(1)
    assert spent == f"{info['ledger']['cpu_hours']:.4g}"  # the printed total is run.json's
    code, shown, _ = hpo(capsys, "results", "show", uri)
    assert code == 0 and f", {spent} CPU-hours, " in shown, shown  # and `hpo results show`'s

    code, out, err = hpo(capsys, "resume", uri, "--output", "json")
    assert code == 0, err[-3000:]
    summary = RunSummary(**json.loads(out.strip().splitlines()[-1]))
    assert summary.status == "finished"
    rows, _ = check_contract(summary, load_spec(spec_path))  # every (trial, iteration) exactly once
    clean, clean_rows = uninterrupted
    assert deterministic_rows(in_trial_order(rows)) == deterministic_rows(in_trial_order(clean_rows))
    assert (summary.best, summary.statuses) == (clean.best, clean.statuses)


def test_a_second_ctrl_c_stops_at_once_and_the_run_still_resumes(ray_cluster, tmp_path, capsys):
    """The paced workload's epochs take 1 s, so the second Ctrl-C lands while the first one's wind-down waits for
    the running trials' next reports. It ends the job and everything it started at once, as a SIGKILL would: run.json
    still says running, and the resume ends with every row once, equal to an uninterrupted run."""
    spec = paced_spec("twice", tmp_path / "runs", samples=2, concurrency=2, train={"max_epochs": 3})
    spec_path = spec_file(tmp_path / "job.yaml", spec)
    proc = start_run(spec_path)
    lines: list[str] = []
    try:
        uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
        read_until(proc, lambda lines: "epoch   1/3" in lines[-1], lines)
        family = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        read_until(proc, lambda lines: WINDING_DOWN in lines[-1], lines)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        gone, alive = psutil.wait_procs(family, timeout=30)
    finally:
        kill_family(proc)
    err = "".join(lines) + err
    assert proc.returncode == 130, err[-3000:]
    assert f"stopped at once (SIGINT again); the run can be resumed: hpo resume {uri}" in err
    assert not alive, alive  # the embedded Ray's processes went with it
    assert json.loads(open_store(uri).read_bytes("run.json"))["status"] == "running"

    code, out, err = hpo(capsys, "resume", uri, "--output", "json")
    assert code == 0, err[-3000:]
    rows = load_results(uri)
    keys = list(zip(rows["trial_id"].to_pylist(), rows["iteration"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 2 * 3
    clean = run(load_spec(spec_path), storage=str(tmp_path / "clean"), progress=lambda line: None)
    assert deterministic_rows(in_trial_order(rows)) == deterministic_rows(
        in_trial_order(load_results(clean.results_uri))
    )


def test_a_report_that_breaks_the_declaration_stops_the_job_at_once_and_resumes_once_fixed(
    ray_cluster, tmp_path, capsys
):
    """Reporting an undeclared metric (`epoch`, as Ray Tune users do) would fail every trial the same way: the job
    stops at the first, says which key and how to fix it in one line, exits 1, and resumes once the code is fixed."""
    marker = tmp_path / "fixed"
    spec = spec_dict(
        name="undeclared",
        workload="tests.workloads_for_tests:reports_epoch",
        storage=str(tmp_path / "runs"),
        search={
            "metric": "loss",
            "mode": "min",
            "num_samples": 8,
            "max_concurrent": 2,
            "space": {"x": {"uniform": [0.0, 1.0]}},
            "fixed": {"fixed_marker": str(marker)},
        },
        train={"max_epochs": 3},
    )
    spec_path = spec_file(tmp_path / "job.yaml", spec)
    code, out, err = hpo(capsys, "run", str(spec_path))
    assert code == 1, err[-3000:]
    uri = out.splitlines()[0].removeprefix("results_uri: ")
    last = err.strip().splitlines()[-1]
    assert last.startswith("hpo: the job stopped: trial_000") and "undeclared metric 'epoch'" in last, last
    assert "declare every reported metric in Workload(metrics=" in last and f"hpo resume {uri}" in last
    assert err.count(" started ") <= 2 and err.count(" FAILED: ") <= 2, err  # not one failure per trial
    info = json.loads(open_store(uri).read_bytes("run.json"))
    assert info["status"] == "failed" and "undeclared metric 'epoch'" in info["reason"]
    assert {r["status"] for r in load_trials(uri).to_pylist()} <= {"error", "interrupted"}

    marker.touch()  # the code is fixed
    code, out, err = hpo(capsys, "resume", uri, "--output", "json")
    assert code == 0, err[-3000:]
    summary = RunSummary(**json.loads(out.strip().splitlines()[-1]))
    assert summary.status == "finished" and summary.statuses == {"completed": 8}
    rows = load_results(uri)
    assert rows.num_rows == 8 * 3 and "epoch" not in rows.column_names


def test_in_a_library_callers_process_a_second_signal_raises_instead_of_ending_it(ray_cluster, tmp_path):
    """orchestrator.run in a notebook: the kernel is the user's, so a second Ctrl-C raises KeyboardInterrupt
    into the run (its trials end, its tables are written, the run is resumable) and the process lives on."""
    import threading

    from orchestrator.stopping import SecondSignal

    assert not SecondSignal.exits  # only the `hpo` executable sets it
    spec = load_spec(
        spec_file(
            tmp_path / "job.yaml",
            paced_spec("notebook", tmp_path / "runs", samples=2, concurrency=2, train={"max_epochs": 3}),
        )
    )
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if "epoch   1/3" in line and not any("interrupted by" in seen for seen in lines):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, from the run's own thread of progress
        elif WINDING_DOWN in line:
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()  # and again

    with pytest.raises(KeyboardInterrupt):
        run(spec, progress=progress)
    uri = next(line for line in lines if "interrupted by SIGINT" in line) and _only_run(tmp_path / "runs")
    info = json.loads(open_store(uri).read_bytes("run.json"))
    # the second Ctrl-C came while the trials were mid-epoch (1 s each): the run wrote its tables on the way out
    assert info["status"] == "interrupted", info
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back
    summary = run_resumed(uri)
    assert summary.status == "finished" and summary.statuses == {"completed": 2}


def _only_run(root) -> str:
    (job,) = list(root.iterdir())
    (one,) = list(job.iterdir())
    return str(one)


def run_resumed(uri: str):
    from orchestrator.api import resume

    return resume(uri, progress=lambda line: None)
