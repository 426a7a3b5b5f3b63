"""Jobs whose whole results tree lives on a real S3-compatible server (SeaweedFS), outages included."""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3server
import yaml
from conftest import ROOT, hpo, spec_dict, wait_for
from contract import check_contract, deterministic_rows

from orchestrator.api import run
from orchestrator.ray_support import ray_compat
from orchestrator.results import load_results, load_trials
from orchestrator.spec import parse_spec
from orchestrator.storage import open_store
from orchestrator.storage.spool import run_spool_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3):
    storage = f"s3://{s3server.BUCKET}/jobs-{secrets.token_hex(3)}"
    spec = parse_spec(
        spec_dict(
            storage=storage,
            search={"num_samples": 4, "max_concurrent": 2},
            scheduler={"type": "asha", "grace_period": 1},
            train={"max_epochs": 4},
        )
    )
    lines: list[str] = []
    summary = run(spec, progress=lines.append)
    return spec, summary, lines


def test_results_contract_holds_read_straight_from_s3(s3_run):
    spec, summary, _ = s3_run
    assert summary.results_uri.startswith(spec.storage + "/t-job/")
    rows, trials = check_contract(summary, spec)
    assert rows.num_rows == sum(trials["iterations"].to_pylist())
    store = open_store(summary.results_uri)
    names = store.list()
    for required in ("spec.yaml", "run.json", "trials.parquet", "results/_manifest.json"):
        assert required in names
    assert any(n.startswith("tune/") for n in names)  # Ray's experiment state, mirrored
    assert json.loads(store.read_bytes("run.json"))["status"] == "finished"
    results_files = [n for n in names if n.startswith("results/") and n.endswith(".parquet")]
    assert len(results_files) == 1  # compacted at the end
    assert summary.upload_pending == 0
    # quiet when healthy: no word of the spool, and nothing left in it
    _, _, lines = s3_run
    assert not [line for line in lines if "spool" in line], lines
    assert not run_spool_dir(summary.results_uri).exists()
    import orchestrator

    again = orchestrator.summarize(summary.results_uri)  # read back from S3 alone
    assert (again.best, again.num_trials, again.statuses) == (
        summary.best,
        summary.num_trials,
        summary.statuses,
    )


def test_polars_and_pyarrow_read_the_table_from_s3(s3_run):
    import polars as pl
    import pyarrow.dataset as ds

    _, summary, _ = s3_run
    options = {
        "aws_endpoint_url": s3server.ENDPOINT,
        "aws_access_key_id": s3server.ACCESS_KEY,
        "aws_secret_access_key": s3server.SECRET_KEY,
        "aws_region": "us-east-1",
    }
    frame = pl.read_parquet(f"{summary.results_uri}/results/*.parquet", storage_options=options)
    rows = load_results(summary.results_uri)
    assert frame.height == rows.num_rows
    assert sorted(frame["val_loss"].to_list()) == sorted(rows["val_loss"].to_pylist())
    fs, root = open_store(summary.results_uri).arrow_filesystem()
    assert ds.dataset(f"{root}/results", filesystem=fs, format="parquet").count_rows() == rows.num_rows


def test_pull_ls_and_show_work_on_s3(s3_run, tmp_path, capsys):
    spec, summary, _ = s3_run
    code, out, err = hpo(
        capsys, "results", "pull", summary.results_uri, "--to", str(tmp_path / "copy"), "--checkpoints"
    )
    assert code == 0, err
    local = str(tmp_path / "copy")
    assert deterministic_rows(load_results(local)) == deterministic_rows(load_results(summary.results_uri))
    assert load_trials(local).num_rows == summary.num_trials
    assert len(list((tmp_path / "copy" / "checkpoints").glob("trial_*/epoch-*.pt"))) == summary.num_trials
    code, out, _ = hpo(capsys, "results", "ls", spec.storage)
    assert code == 0 and summary.results_uri in out and "finished" in out
    code, out, _ = hpo(capsys, "results", "show", summary.results_uri)
    assert code == 0 and out.startswith("4 trials")


def test_spec_with_credentials_is_rejected():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match="credentials never go in a spec"):
        parse_spec(spec_dict(storage="s3://b/p", storage_options={"aws_secret_access_key": "x"}))
    with pytest.raises(SpecError, match="must not carry credentials"):
        parse_spec(spec_dict(storage="s3://AKIA:abc@b/p"))


# Long enough that the job is still running once its first trial has ended (the first manifest is written then)
# and the outage has begun: 6 rounds of two 10-epoch trials. (It was 24 x 20: 480 rows, ~40 CPU-s of reports.)
TRIALS, EPOCHS = 12, 10


def test_outage_mid_run_loses_no_row_and_leaks_no_secret(ray_cluster, s3, tmp_path):
    """Stop the server while a job runs (in its own process) and keep it down until the job has gone on
    without it (more than 10 epochs reported, and a trial ended, so rows, trials.parquet and checkpoints all
    had to wait in the spool); restart it on the same data. Nothing is lost or written twice."""
    storage = f"s3://{s3server.BUCKET}/outage-{secrets.token_hex(3)}"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(
                name="outage",
                storage=storage,
                search={"num_samples": TRIALS, "max_concurrent": 2},
                train={"max_epochs": EPOCHS},
            )
        )
    )
    proc = _start_hpo(["run", str(spec_path), "--output", "json"], tmp_path, {"HPO_DRAIN_TIMEOUT_S": "120"})
    progress: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: progress.extend((time.monotonic(), line) for line in proc.stderr)
    )
    reader.start()
    first = proc.stdout.readline()  # results_uri: ..., printed before the first trial
    assert first.startswith("results_uri: "), first
    run_store = open_store(first.removeprefix("results_uri: ").strip())
    # rows are live on S3 (a HEAD on the manifest: listing a bucket that earlier tests filled can take seconds)
    wait_for(lambda: run_store.exists("results/_manifest.json"), "the run's first manifest", 180)
    began = time.monotonic()
    s3.stop()  # down at once

    def went_on_without_it() -> bool:
        after = [line for t, line in list(progress) if t > began]
        return sum(" epoch " in line for line in after) > 10 and any(
            " completed after " in line for line in after
        )

    try:
        wait_for(went_on_without_it, "the job to go on without the store", 300)
    except TimeoutError:
        tail = "".join(f"{t - began:7.1f} {line}" for t, line in list(progress)[-60:])
        raise AssertionError(f"the job did not go on without the store; its last lines:\n{tail}") from None
    outage = (began, time.monotonic())
    s3.start()
    proc.wait(timeout=600)
    reader.join()
    stdout, stderr = first + proc.stdout.read(), "".join(line for _, line in progress)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    rows = load_results(summary["results_uri"])
    keys = list(zip(rows["trial_id"].to_pylist(), rows["iteration"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == TRIALS * EPOCHS  # every row exactly once
    assert summary["upload_pending"] == 0
    # Training went on while the server was down: epochs were reported inside the outage window.
    during = [line for t, line in progress if outage[0] < t < outage[1] and " epoch " in line]
    assert len(during) > 10, f"only {len(during)} epochs reported during the outage"
    secret = s3server.SECRET_KEY.encode()
    for key, data in s3.all_objects().items():
        assert secret not in data, key
    assert s3server.SECRET_KEY not in stdout + stderr


def _start_hpo(args, cwd: Path, env_extra: dict):
    import os

    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_store_down_at_the_end_exits_3_and_sync_uploads_later(ray_cluster, s3, tmp_path, capsys, monkeypatch):
    storage = f"s3://{s3server.BUCKET}/late-{secrets.token_hex(3)}"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(name="late", storage=storage, search={"num_samples": 2}, train={"max_epochs": 2})
        )
    )
    monkeypatch.setenv("HPO_DRAIN_TIMEOUT_S", "3")
    monkeypatch.chdir(tmp_path)
    s3.stop()  # down for the whole run
    try:
        code, out, env_note = hpo(capsys, "run", str(spec_path), "--output", "json")
    finally:
        s3.start()
    assert code == 3, env_note[-2000:]
    uri = out.splitlines()[0].removeprefix("results_uri: ")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["upload_pending"] > 0 and "hpo results sync" in env_note and "Traceback" not in env_note
    assert summary["best"] is not None  # the summary comes from the rows written, not from the store
    assert "storage: an upload failed (" in env_note
    code, out, _ = hpo(capsys, "results", "sync")  # what waits, for which run
    assert code == 3 and re.search(rf"\d+ item\(s\) wait for {re.escape(uri)}  \(hpo results sync ", out), out
    code, out, err = hpo(capsys, "results", "sync", uri)
    assert code == 0, err
    rows = load_results(uri)
    assert rows.num_rows == 4 and load_trials(uri).num_rows == 2
    assert not run_spool_dir(uri).exists()  # all landed: nothing kept
    code, out, _ = hpo(capsys, "results", "sync")
    assert code in (0, 3) and uri not in out
    code, out, _ = hpo(capsys, "results", "sync", uri)
    assert code == 0 and "uploaded 0 item(s)" in out


def test_secret_appears_in_no_log_object_or_spool(s3_run, s3):
    """The S3 secret key: not in any object written (Parquet metadata, spec copy, Ray's pickled experiment
    state included), Ray's session logs, the local spool, or the run's progress output."""
    import os

    secret = s3server.SECRET_KEY.encode()
    _, summary, lines = s3_run
    assert s3server.SECRET_KEY not in "\n".join(lines)
    objects = s3.all_objects()
    assert any(key.endswith("tuner.pkl") for key in objects) and any(
        key.endswith(".parquet") for key in objects
    )
    leaks = [key for key, data in objects.items() if secret in data]
    session_dir = Path(ray_compat.session_dir())
    for root in (session_dir, Path(os.environ["HPO_SPOOL_DIR"])):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    if secret in path.read_bytes():
                        leaks.append(str(path))
                except OSError:
                    pass
    assert not leaks, leaks


def test_missing_bucket_or_wrong_key_is_refused_before_training(s3, tmp_path, capsys, monkeypatch):
    for storage, env, words in (
        (f"s3://no-such-bucket-{secrets.token_hex(3)}/x", {}, "NoSuchBucket"),
        (f"s3://{s3server.BUCKET}/x", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "AccessDenied"),
    ):
        spec_path = tmp_path / "job.yaml"
        spec_path.write_text(yaml.safe_dump(spec_dict(storage=storage)))
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            code, out, err = hpo(capsys, "run", str(spec_path))
        assert code == 2 and words in err, err[-2000:]
        assert "Traceback" not in err and "results_uri" not in out
        assert "wrong-secret" not in err and s3server.SECRET_KEY not in err


def test_ensemble_reads_checkpoints_from_s3_and_writes_ensemble_parquet_there(s3_run):
    from orchestrator.practice.ensemble import build_ensemble
    from orchestrator.results.layout import ENSEMBLE_FILE

    _, summary, _ = s3_run
    result = build_ensemble(summary.results_uri, top_k=2)
    table = pq.read_table(io.BytesIO(open_store(summary.results_uri).read_bytes(ENSEMBLE_FILE)))
    assert table["role"].to_pylist() == ["ensemble", "best_single", "member", "member"]
    assert table["test_accuracy"][0].as_py() == result.ensemble["test_accuracy"]
