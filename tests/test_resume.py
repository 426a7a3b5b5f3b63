"""`hpo resume`: SIGKILL `hpo run` and everything it started, resume from storage, end with every row once."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil
import pytest
import yaml

import s3server
from conftest import HPO, ROOT, run_hpo, spec_dict
from contract import check_contract, deterministic_rows
from orchestrator.results import load_results
from orchestrator.spec import load_spec
from orchestrator.storage import open_store
from orchestrator.summary import RunSummary

pytestmark = pytest.mark.slow


def _sorted(table):
    return table.sort_by([("trial_id", "ascending"), ("iteration", "ascending")])


def run_and_kill(spec_path, trials_done: int) -> str:
    """Start `hpo run`, SIGKILL it and every process it started once it reports `trials_done` finished trials
    (counted on its progress output, so storage lag cannot let the job finish first); return its URI."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*HPO, "run", str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
    done = 0
    for line in proc.stderr:
        done += " completed after " in line
        if done >= trials_done:
            break
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:  # Ray's own processes, whatever their process group
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    assert json.loads(open_store(uri).read_bytes("run.json"))["status"] == "running"  # it died mid-run
    return uri


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_then_resume_ends_with_every_row_once_and_the_uninterrupted_summary(where, tmp_path, request):
    storage = str(tmp_path / "runs") if where == "local" else f"s3://{s3server.BUCKET}/resume-{tmp_path.name[-12:]}"
    if where == "s3":
        request.getfixturevalue("s3")
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(name="killed", storage=storage,
                                                  search={"num_samples": 8, "max_concurrent": 2},
                                                  train={"max_epochs": 6})))
    uri = run_and_kill(spec_path, trials_done=2)
    resumed = run_hpo("resume", uri, "--spec", str(spec_path), "--output", "json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming: " in resumed.stderr and "row(s) kept" in resumed.stderr
    summary = RunSummary(**json.loads(resumed.stdout.strip().splitlines()[-1]))
    rows, _ = check_contract(summary, load_spec(spec_path))  # every (trial, iteration) exactly once
    clean = run_hpo("run", str(spec_path), "--output", "json", "--storage", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr[-2000:]
    uninterrupted = RunSummary(**json.loads(clean.stdout.strip().splitlines()[-1]))
    assert deterministic_rows(_sorted(rows)) == deterministic_rows(_sorted(load_results(uninterrupted.results_uri)))
    assert (summary.best, summary.statuses, summary.num_trials) == \
        (uninterrupted.best, uninterrupted.statuses, uninterrupted.num_trials)

    # Resuming a finished run says so and changes nothing.
    before = open_store(uri).read_bytes("results/_manifest.json")
    again = run_hpo("resume", uri)
    assert again.returncode == 0 and "already finished; nothing to resume" in again.stderr
    assert open_store(uri).read_bytes("results/_manifest.json") == before


def test_resume_with_a_changed_spec_is_refused_naming_the_difference(tmp_path):
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(name="changed", storage=str(tmp_path / "runs"),
                                                  search={"num_samples": 6, "max_concurrent": 2},
                                                  train={"max_epochs": 4})))
    uri = run_and_kill(spec_path, trials_done=1)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec_dict(name="changed", storage=str(tmp_path / "runs"),
                                                search={"num_samples": 6, "max_concurrent": 2},
                                                train={"max_epochs": 5})))
    refused = run_hpo("resume", uri, "--spec", str(changed))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "differs from the run's at train.max_epochs: 5 in the given spec, 4 in the run" in refused.stderr
