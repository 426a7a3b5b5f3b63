"""Jobs whose whole results tree lives on a real S3-compatible server (SeaweedFS), outages included."""

from __future__ import annotations

import io
import json
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
from conftest import ROOT, run_hpo, spec_dict
from contract import check_contract, deterministic_rows

from orchestrator.results import load_results, load_trials
from orchestrator.runner import run
from orchestrator.spec import parse_spec
from orchestrator.storage import open_store

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


def test_pull_ls_and_show_work_on_s3(s3_run, tmp_path):
    spec, summary, _ = s3_run
    pulled = run_hpo("results", "pull", summary.results_uri, "--to", str(tmp_path / "copy"), "--checkpoints")
    assert pulled.returncode == 0, pulled.stderr
    local = str(tmp_path / "copy")
    assert deterministic_rows(load_results(local)) == deterministic_rows(load_results(summary.results_uri))
    assert load_trials(local).num_rows == summary.num_trials
    assert len(list((tmp_path / "copy" / "checkpoints").glob("trial_*/epoch-*.pt"))) == summary.num_trials
    listed = run_hpo("results", "ls", spec.storage)
    assert listed.returncode == 0 and summary.results_uri in listed.stdout and "finished" in listed.stdout
    shown = run_hpo("results", "show", summary.results_uri)
    assert shown.returncode == 0 and shown.stdout.startswith("4 trials")


def test_spec_with_credentials_is_rejected():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match="credentials never go in a spec"):
        parse_spec(spec_dict(storage="s3://b/p", storage_options={"aws_secret_access_key": "x"}))
    with pytest.raises(SpecError, match="must not carry credentials"):
        parse_spec(spec_dict(storage="s3://AKIA:abc@b/p"))


TRIALS, EPOCHS = 40, 30


def test_outage_mid_run_loses_no_row_and_leaks_no_secret(ray_cluster, s3, tmp_path):
    """Stop the server for ~25 s while a job runs (in its own process), restart it on the same data."""
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
    store = open_store(storage)
    _wait_for(lambda: any("/results/part-" in n for n in store.list()), 180)  # rows are live on S3
    s3.stop()
    outage = (time.monotonic(), None)
    time.sleep(25)
    outage = (outage[0], time.monotonic())
    s3.start()
    proc.wait(timeout=600)
    reader.join()
    stdout, stderr = proc.stdout.read(), "".join(line for _, line in progress)
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


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.5)


def test_store_down_at_the_end_exits_3_and_sync_uploads_later(ray_cluster, s3, tmp_path):
    storage = f"s3://{s3server.BUCKET}/late-{secrets.token_hex(3)}"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(name="late", storage=storage, search={"num_samples": 2}, train={"max_epochs": 2})
        )
    )
    s3.stop()  # down for the whole run
    try:
        proc = run_hpo(
            "run", str(spec_path), "--output", "json", cwd=tmp_path, env={"HPO_DRAIN_TIMEOUT_S": "3"}
        )
    finally:
        s3.start()
    env_note = proc.stderr
    assert proc.returncode == 3, env_note[-2000:]
    uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["upload_pending"] > 0 and "hpo results sync" in env_note and "Traceback" not in env_note
    assert summary["best"] is not None  # the summary comes from the rows written, not from the store
    synced = run_hpo("results", "sync", uri)
    assert synced.returncode == 0, synced.stderr
    rows = load_results(uri)
    assert rows.num_rows == 4 and load_trials(uri).num_rows == 2
    again = run_hpo("results", "sync", uri)
    assert again.returncode == 0 and "uploaded 0 item(s)" in again.stdout


def test_secret_appears_in_no_log_object_or_spool(s3_run, s3):
    """The S3 secret key: not in any object written (Parquet metadata, spec copy, Ray's pickled experiment
    state included), Ray's session logs, the local spool, or the run's progress output."""
    import os

    import ray

    secret = s3server.SECRET_KEY.encode()
    _, summary, lines = s3_run
    assert s3server.SECRET_KEY not in "\n".join(lines)
    objects = s3.all_objects()
    assert any(key.endswith("tuner.pkl") for key in objects) and any(
        key.endswith(".parquet") for key in objects
    )
    leaks = [key for key, data in objects.items() if secret in data]
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    for root in (session_dir, Path(os.environ["HPO_SPOOL_DIR"])):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    if secret in path.read_bytes():
                        leaks.append(str(path))
                except OSError:
                    pass
    assert not leaks, leaks


def test_missing_bucket_or_wrong_key_is_refused_before_training(ray_cluster, s3, tmp_path):
    for storage, env, words in (
        (f"s3://no-such-bucket-{secrets.token_hex(3)}/x", {}, "NoSuchBucket"),
        (f"s3://{s3server.BUCKET}/x", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "AccessDenied"),
    ):
        spec_path = tmp_path / "job.yaml"
        spec_path.write_text(yaml.safe_dump(spec_dict(storage=storage)))
        proc = run_hpo("run", str(spec_path), env=env)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "results_uri" not in proc.stdout
        assert "wrong-secret" not in proc.stderr and s3server.SECRET_KEY not in proc.stderr


def test_ensemble_reads_checkpoints_from_s3_and_writes_ensemble_parquet_there(s3_run):
    from orchestrator.ensemble import ENSEMBLE_FILE, build_ensemble

    _, summary, _ = s3_run
    result = build_ensemble(summary.results_uri, top_k=2)
    table = pq.read_table(io.BytesIO(open_store(summary.results_uri).read_bytes(ENSEMBLE_FILE)))
    assert table["role"].to_pylist() == ["ensemble", "best_single", "member", "member"]
    assert table["test_accuracy"][0].as_py() == result.ensemble["test_accuracy"]
