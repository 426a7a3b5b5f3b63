"""`hpo submit` and friends against a real local Ray head with token authentication."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_hpo, spec_dict, wait_for
from contract import check_contract
from rayhead import RayHead, free_port

from orchestrator.results import load_results, summarize
from orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    server = RayHead(root / "ray")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def jobs_cli(head, cli):
    """`hpo` in this process against the head's Jobs API (HTTP only: the commands start no Ray)."""

    def call(*args, token=True):
        return cli(*args, "--address", head.url, env={"RAY_AUTH_TOKEN": head.token if token else ""})

    return call


def test_unauthenticated_jobs_api_calls_are_refused(head):
    for headers, code in (({}, 401), ({"Authorization": "Bearer wrong"}, 403)):
        request = urllib.request.Request(f"{head.url}/api/jobs/", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == code


def test_submitted_job_succeeds_with_logs_and_results(head, jobs_cli, tmp_path):
    """A submitted job runs on the cluster, its logs and results are where hpo says; its storage path, full of
    shell syntax, reaches the cluster as one argument: the job writes there and runs nothing else."""
    pwned = tmp_path / "PWNED"
    hostile = tmp_path / f"out; touch {pwned}; $(touch {pwned}) `touch {pwned}`"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(
                name="submitted",
                storage="/nonexistent-default",
                search={"num_samples": 2},
                train={"max_epochs": 2},
            )
        )
    )
    proc = jobs_cli("submit", str(spec_path), "--storage", str(hostile), "--follow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not pwned.exists()
    runs = list((hostile / "submitted").iterdir())
    assert len(runs) == 1 and (runs[0] / "trials.parquet").is_file()
    lines = proc.stdout.strip().splitlines()
    submission_id = lines[-1]
    assert re.fullmatch(r"hpo-submitted-[0-9a-f]{6}", submission_id)
    results_uri = lines[0].removeprefix("results_uri: ")
    assert "SUCCEEDED" in proc.stderr and head.token not in proc.stdout + proc.stderr
    status = jobs_cli("status", submission_id)
    assert status.returncode == 0 and status.stdout.splitlines()[0] == "SUCCEEDED", status.stdout
    summary = summarize(results_uri)
    best = f"best val_loss={summary.best['metric']:.4g} ({summary.best['trial_id']} epoch "
    assert "trials: 2 of 2 done, 0 running; " + best in status.stdout, status.stdout
    assert "CPU-hours" in status.stdout and "elapsed " in status.stdout and "run: finished" in status.stdout
    logs = jobs_cli("logs", submission_id)
    assert logs.returncode == 0 and f"results_uri: {results_uri}" in logs.stdout
    # the log ends with the summary `hpo run` prints, not a JSON blob
    assert "finished 2 trials (2 completed)" in logs.stdout and f"results: {results_uri}" in logs.stdout
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    check_contract(summary, spec)
    listed = jobs_cli("list")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(submission_id))
    assert "submitted" in row and "SUCCEEDED" in row and results_uri in row
    for output in (status, logs, listed):
        assert head.token not in output.stdout + output.stderr
    # kind: ensemble specs are jobs too: ensemble the run just made, on the cluster.
    ensemble_spec = tmp_path / "ensemble.yaml"
    ensemble_spec.write_text(
        yaml.safe_dump({"kind": "ensemble", "name": "submitted-ens", "run": results_uri, "top_k": 2})
    )
    ens = jobs_cli("submit", str(ensemble_spec), "--follow")
    assert ens.returncode == 0 and "SUCCEEDED" in ens.stderr, ens.stderr[-3000:]
    assert ens.stdout.startswith(f"results_uri: {results_uri}")
    ens_logs = jobs_cli("logs", ens.stdout.strip().splitlines()[-1])
    assert f"wrote {results_uri}/ensemble.parquet" in ens_logs.stdout
    assert pq.read_table(f"{results_uri}/ensemble.parquet").num_rows == 4  # ensemble, best single, 2 members


def test_bad_token_missing_token_unknown_job_and_bad_spec_fail_cleanly(head, jobs_cli, cli, tmp_path):
    missing = jobs_cli("list", token=False)
    assert (
        missing.returncode in (1, 2) and "auth token" in missing.stderr and "Traceback" not in missing.stderr
    )
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token")
    wrong = cli(
        "status", "hpo-x", "--address", head.url, "--token-file", str(token_file), env={"RAY_AUTH_TOKEN": ""}
    )
    assert wrong.returncode in (1, 2) and "refused the Ray auth token" in wrong.stderr
    assert "wrong-token" not in wrong.stderr + wrong.stdout and "Traceback" not in wrong.stderr
    unknown = jobs_cli("status", "hpo-does-not-exist")
    assert (
        unknown.returncode in (1, 2)
        and "Traceback" not in unknown.stderr
        and len(unknown.stderr.splitlines()) == 1
    )
    assert "there is no job 'hpo-does-not-exist' on the cluster at" in unknown.stderr, unknown.stderr
    no_file = {"RAY_AUTH_TOKEN": "", "HOME": str(tmp_path)}  # no token, no ~/.ray/auth_token
    none = cli("list", "--address", head.url, env=no_file)
    assert none.returncode == 2 and len(none.stderr.strip().splitlines()) == 1, none.stderr
    # (a process that joined a token cluster before may still send Ray's cached token: refused, not missing)
    assert none.stderr.strip().endswith(("set RAY_AUTH_TOKEN or pass --token-file.", "or --token-file.")), (
        none.stderr
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_dict(search={"algorithm": "grdi"})))
    refused = jobs_cli("submit", str(bad))
    assert refused.returncode == 2 and "did you mean 'grid'" in refused.stderr
    unreachable = cli("list", "--address", "http://127.0.0.1:9", env={"RAY_AUTH_TOKEN": head.token})
    assert unreachable.returncode in (1, 2) and "cannot reach" in unreachable.stderr
    assert head.token not in unreachable.stderr


def test_hpo_run_joins_a_token_cluster_by_its_gcs_address_and_refuses_a_bad_one(head, cli, tmp_path):
    """`hpo run --address HOST:PORT` drives trials on the head's Ray; a wrong token, an unreachable head or a
    dashboard URL is one line, exit 2, nothing written (ray.init alone waits minutes on an unreachable head, and
    retries a refused token for 20 s: hpo asks the GCS once first)."""
    storage = tmp_path / "results"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(name="joined", storage=str(storage), search={"num_samples": 2}, train={"max_epochs": 2})
        )
    )
    gcs = f"127.0.0.1:{head.gcs_port}"
    refusals = {
        "refused this driver's auth token": (gcs, "wrong-token"),
        "cannot reach a Ray head there": (f"127.0.0.1:{free_port()}", head.token),
        "that is a dashboard (Jobs API) address": (head.url, head.token),
    }
    for reason, (address, token) in refusals.items():
        # a refused token needs a process that has not joined a Ray yet; the other two are refused before Ray
        call = run_hpo if "auth token" in reason else cli
        proc = call("run", str(spec_path), "--address", address, env={"RAY_AUTH_TOKEN": token})
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and reason in proc.stderr, proc.stderr[
            -2000:
        ]
        assert not storage.exists() and proc.stdout == "" and "wrong-token" not in proc.stderr
    joined = run_hpo("run", str(spec_path), "--address", gcs, env={"RAY_AUTH_TOKEN": head.token})
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert head.token not in joined.stdout + joined.stderr
    assert "finished 2 trials (2 completed)" in joined.stdout
    jobs = head.get("/api/jobs/")  # a driver that joined shows up as a job of the head's cluster
    assert any(job.get("type") == "DRIVER" and job.get("status") == "SUCCEEDED" for job in jobs), jobs


HOLD_A_CPU = """
import sys, threading
import ray
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=1)
class Holder:
    def ready(self):
        return True
holder = Holder.remote()
ray.get(holder.ready.remote())
print("holding", flush=True)
threading.Event().wait()  # until the test kills this driver
"""


def test_a_ddp_trial_whose_worker_group_cannot_start_fails_in_bounded_time(head, tmp_path):
    """Two workers x 1.5 CPUs can never fit on the head's 2 CPUs (and no autoscaler could add any): refused before
    the search. Two workers x 0.75 CPUs fit the head, but another driver holds 1 of its CPUs for as long as the
    job runs: Ray Train waits for them forever. The watchdog stops the trial after train.trial_timeout_s with the
    reason in trials.parquet; every trial failed: exit 1."""
    storage = tmp_path / "results"
    spec_path = tmp_path / "job.yaml"

    def job(cpus_per_worker: float):
        spec_path.write_text(
            yaml.safe_dump(
                spec_dict(
                    name="stuck",
                    storage=str(storage),
                    search={"num_samples": 1},
                    train={
                        "max_epochs": 1,
                        "workers": 2,
                        "cpus_per_worker": cpus_per_worker,
                        "trial_timeout_s": 8,
                        "max_retries": 0,
                    },
                )
            )
        )
        return run_hpo(
            "run",
            str(spec_path),
            "--address",
            f"127.0.0.1:{head.gcs_port}",
            "--output",
            "json",
            env={"RAY_AUTH_TOKEN": head.token},
            timeout=300,
        )

    proc = job(1.5)
    assert proc.returncode == 2 and "the live nodes hold 1" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not storage.exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_CPU, f"127.0.0.1:{head.gcs_port}"],
        env={**os.environ, "RAY_AUTH_TOKEN": head.token, "RAY_AUTH_MODE": "token"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding", "the CPU holder did not start"
        proc = job(0.75)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["statuses"] == {"error": 1}
    trial = pq.read_table(f"{summary['results_uri']}/trials.parquet").to_pylist()[0]
    assert trial["status"] == "error" and trial["iterations"] == 0
    assert "no report for" in trial["error"] and "train.trial_timeout_s = 8" in trial["error"]
    # nothing of the stuck trial is left holding the cluster: its worker group's placement group and controller
    # (the GCS removes a finished job's groups shortly after its driver exits; a pending one would keep an
    # autoscaler launching nodes for it)
    for _ in range(30):
        groups = head.get("/api/v0/placement_groups")["data"]["result"]["result"]
        left = [group for group in groups if group["state"] != "REMOVED"]
        if not left:
            break
        time.sleep(1)
    assert groups and not left, (left, proc.stderr[-3000:])
    actors = head.get("/api/v0/actors?limit=1000")["data"]["result"]["result"]
    assert not [
        a for a in actors if a["class_name"] in ("TrainController", "ImplicitFunc") and a["state"] != "DEAD"
    ]


PACED_MODULE = '''
"""The user's own workload, shipped with --working-dir: each epoch takes `pace_s` of wall time."""
import time

from orchestrator.workloads import Workload


def _train(ctx):
    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        start = state["epoch"] + 1
    for epoch in range(start, ctx.max_epochs):
        time.sleep(ctx.config["pace_s"])
        ctx.report({"loss": (ctx.config["x"] - 0.3) ** 2 + 1.0 / (epoch + 1)}, checkpoint={"epoch": epoch})


def paced():
    return Workload(name="paced", train=_train, metrics={"loss": "min"}, hyperparameters={"x": 0.5, "pace_s": 1.0})
'''


def test_hpo_stop_winds_a_submitted_job_down_to_a_stopped_run_that_resumes(head, jobs_cli, tmp_path):
    """`hpo stop` (the Jobs API's SIGTERM): the job's running trials stop at their next report, the tables agree,
    run.json says stopped, `hpo status` says how far it got, and `hpo resume` ends with every row once. The
    workload lives in the --working-dir folder only: submit validates the spec against that folder."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "userwl.py").write_text(PACED_MODULE)
    storage = tmp_path / "results"
    spec = spec_dict(
        name="stopped",
        workload="userwl:paced",
        storage=str(storage),
        search={
            "metric": "loss",
            "mode": "min",
            "num_samples": 6,
            "max_concurrent": 2,
            "space": {"x": {"uniform": [0.0, 1.0]}},
            "fixed": {},
        },
        scheduler={"type": "fifo"},
        train={"max_epochs": 4},
    )
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    proc = jobs_cli("submit", str(spec_path), "--working-dir", str(ws))  # validated here, from ws
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    submission_id = proc.stdout.strip().splitlines()[-1]

    def one_done():
        try:
            return any(t["status"] == "completed" for t in pq.read_table(f"{uri}/trials.parquet").to_pylist())
        except (FileNotFoundError, OSError):
            return False

    wait_for(one_done, "a trial of the submitted job to complete", 180)
    stopped = jobs_cli("stop", submission_id)
    assert (
        stopped.returncode == 0
        and "stop requested" in stopped.stdout
        and f"hpo resume {uri}" in stopped.stdout
    )
    wait_for(lambda: jobs_cli("status", submission_id).stdout.startswith("STOPPED"), "the job to stop", 120)
    info = json.loads((Path(uri) / "run.json").read_text())
    assert info["status"] == "stopped", (info, jobs_cli("logs", submission_id).stdout[-3000:])
    trials = pq.read_table(f"{uri}/trials.parquet").to_pylist()
    rows = load_results(uri)
    counts = {}
    for trial_id in rows["trial_id"].to_pylist():
        counts[trial_id] = counts.get(trial_id, 0) + 1
    assert {t["status"] for t in trials} <= {"completed", "interrupted"} and len(trials) == info["trials"]
    assert all(t["iterations"] == counts.get(t["trial_id"], 0) for t in trials), trials
    assert rows.num_rows == info["rows"] < 6 * 4
    status = jobs_cli("status", submission_id).stdout
    done = sum(1 for t in trials if t["status"] != "running")
    assert f"trials: {done} of 6 done, 0 running" in status and "run: stopped" in status, status
    logs = jobs_cli("logs", submission_id).stdout
    assert "stopped after " in logs and f"hpo resume {uri}" in logs and "Traceback" not in logs, logs[-3000:]

    resumed = run_hpo(
        "resume",
        uri,
        "--address",
        f"127.0.0.1:{head.gcs_port}",
        cwd=ws,
        env={"RAY_AUTH_TOKEN": head.token},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = load_results(uri)
    keys = list(zip(rows["trial_id"].to_pylist(), rows["iteration"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 6 * 4
    trials = pq.read_table(f"{uri}/trials.parquet").to_pylist()
    assert {t["status"] for t in trials} == {"completed"} and len(trials) == 6


class _AgentStarting(http.server.BaseHTTPRequestHandler):
    """In front of the real head: its Jobs API as it answers right after `ray start --head` on a loaded machine
    (the head waits 10 s for a job agent, then refuses with this text), for the first `refusals` submissions;
    every other request goes through to the head unchanged."""

    head_url = ""
    refusals = 0

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        if self.command == "POST" and self.path.rstrip("/") == "/api/jobs" and type(self).refusals > 0:
            type(self).refusals -= 1
            text = b"No available agent to submit job, please try again later."
            self.send_response(500)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(
            self.head_url + self.path, data=body, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, data, kind = response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as error:
            status, data, kind = error.code, error.read(), error.headers.get("Content-Type")
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if kind:
            self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _forward

    def log_message(self, *args):
        pass


def test_submit_waits_for_a_jobs_agent_that_is_still_starting(head, cli, tmp_path):
    """Right after `ray start --head` the Jobs API answers before its agent has registered and refuses
    submissions ("No available agent to submit job"); hpo submit says it waits, and submits once it can."""
    _AgentStarting.head_url, _AgentStarting.refusals = head.url, 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AgentStarting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec_path = tmp_path / "job.yaml"
        spec_path.write_text(
            yaml.safe_dump(
                spec_dict(
                    name="early",
                    storage=str(tmp_path / "out"),
                    search={"num_samples": 1},
                    train={"max_epochs": 1},
                )
            )
        )
        address = f"http://127.0.0.1:{server.server_address[1]}"
        proc = cli(
            "submit", str(spec_path), "--address", address, "--follow", env={"RAY_AUTH_TOKEN": head.token}
        )
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "waiting for the cluster's Jobs agent to start (up to 60s)" in proc.stderr
    assert _AgentStarting.refusals == 0 and "SUCCEEDED" in proc.stderr
