"""`hpo run` as a user runs it: a subprocess with its own embedded Ray, on the README's example workload."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import ROOT, hpo, run_hpo
from contract import check_contract

from orchestrator.results import RunSummary
from orchestrator.spec import load_spec

pytestmark = pytest.mark.slow


def readme_block(after: str, lang: str) -> str:
    """The first ```lang block after the line containing `after` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    return match.group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    (work / "my_workloads.py").write_text(readme_block("A complete example", "python"))
    (work / "wine.yaml").write_text(readme_block("a spec that uses it", "yaml"))
    proc = run_hpo("run", "wine.yaml", "--output", "json", "--storage", str(work / "results"), cwd=work)
    return work, proc


def test_readme_example_runs_and_obeys_the_contract(readme_run):
    work, proc = readme_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("results_uri: ")
    summary = json.loads(lines[-1])
    uri = lines[0].removeprefix("results_uri: ")
    assert summary["results_uri"] == uri and uri.startswith(str(work / "results" / "wine-random"))
    assert {"results_uri", "num_trials", "best"} <= set(summary)
    assert set(summary["best"]) == {"trial_id", "iteration", "metric", "config"}
    assert summary["num_trials"] == 4
    spec = load_spec(work / "wine.yaml", check_workload=False)
    check_contract(RunSummary(**summary), spec)
    # Progress went to stderr, one line per epoch at least.
    assert len(re.findall(r"trial_\d{4} epoch", proc.stderr)) >= 4
    assert "Traceback" not in proc.stderr


def test_results_show_prints_top_trials(readme_run, capsys):
    work, proc = readme_run
    uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    code, out, err = hpo(capsys, "results", "show", uri, "--top", "2")
    assert code == 0, err
    out = out.splitlines()
    assert out[0].startswith("4 trials, ranked by best val_accuracy (max)")
    assert "trial_id" in out[1] and "width" in out[1] and len(out) == 5
    assert out[4].startswith("ledger: ") and "CPU-hours" in out[4] and "0 preemptions" in out[4], out[4]
    code, out, err = hpo(capsys, "results", "show", str(work / "nope"))
    assert code == 2 and "Traceback" not in err and "no trials.parquet" in err


def test_tables_read_with_pandas_polars_duckdb(readme_run):
    import duckdb
    import pandas as pd
    import polars as pl

    import orchestrator

    _, proc = readme_run
    uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    table = orchestrator.load_results(uri)
    frame = orchestrator.load_results(uri, as_pandas=True)
    assert isinstance(frame, pd.DataFrame) and len(frame) == table.num_rows == 20
    assert pd.read_parquet(f"{uri}/results").shape[0] == 20
    assert pl.read_parquet(f"{uri}/results/*.parquet").height == 20
    assert pl.read_parquet(f"{uri}/trials.parquet").height == 4
    best = duckdb.sql(f"select max(val_accuracy) from '{uri}/results/*.parquet'").fetchall()[0][0]
    assert best == json.loads(proc.stdout.splitlines()[-1])["best"]["metric"]
    # the README's reader for a live or killed run: the files the manifest names
    files = orchestrator.result_uris(uri)
    assert files and duckdb.sql(f"select count(*) from read_parquet({files})").fetchall()[0][0] == 20
    assert pl.read_parquet(files).height == 20


def test_gpu_job_on_a_machine_without_gpus_is_refused_before_anything_is_written(
    ray_cluster, tmp_path, capsys
):
    import torch
    import yaml
    from conftest import spec_dict

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    storage = tmp_path / "store"
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(spec_dict(train={"use_gpu": True}, storage=str(storage))))
    code, out, err = hpo(capsys, "run", str(path))
    assert code == 2
    assert "train.use_gpu is true" in err and "Traceback" not in err
    assert "results_uri" not in out and not storage.exists()


def test_reproduce_and_sanity_where_the_workload_cannot_be_imported_say_so_in_one_line(
    readme_run, capsys, monkeypatch
):
    """Run from another directory, the README's `my_workloads` module is not importable: one line naming the
    module and the fix, exit 2, no traceback."""
    work, proc = readme_run
    uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    monkeypatch.chdir(ROOT)
    for args in (("reproduce", uri, "trial_0000"), ("sanity", str(work / "wine.yaml"))):
        code, out, err = hpo(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert "cannot import module 'my_workloads'" in err and "No module named 'my_workloads'" in err, err
        assert "run hpo from the directory that holds my_workloads" in err


def test_reproduce_reruns_a_trial_bit_identically_and_names_the_first_difference(
    readme_run, capsys, monkeypatch
):
    import pyarrow.parquet as pq

    work, proc = readme_run
    uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    monkeypatch.chdir(work)  # the README's workload module is in the directory hpo runs from
    code, out, err = hpo(capsys, "reproduce", uri, "trial_0002", "--output", "json")
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["identical"] is True and result["iterations"] >= 1 and "val_accuracy" in result["metrics"]
    assert (
        result["checkpoint"] == "identical"
    )  # the last checkpoint's weights and optimizer, tensor by tensor
    # Tamper with one stored value: the rerun must point at exactly that epoch and metric.
    [part] = json.loads((Path(uri) / "results" / "_manifest.json").read_text())["files"]
    table = pq.read_table(Path(uri) / part)
    rows = table.to_pylist()
    target = next(i for i, r in enumerate(rows) if r["trial_id"] == "trial_0002" and r["iteration"] == 1)
    rows[target]["val_loss"] = rows[target]["val_loss"] + 1e-12
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), Path(uri) / part)
    code, out, err = hpo(capsys, "reproduce", uri, "trial_0002")
    assert code == 1, err[-2000:]
    assert out.startswith("trial_0002: differs first at epoch 1, val_loss: recorded ")
    # several trials: one line each, in the order asked; exit 1 if any differs
    code, out, err = hpo(capsys, "reproduce", uri, "trial_0001", "trial_0002", "--output", "json")
    assert code == 1, err[-2000:]
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert (first["trial_id"], first["identical"]) == ("trial_0001", True), first
    assert (second["trial_id"], second["identical"], second["first_difference"]["iteration"]) == (
        "trial_0002",
        False,
        1,
    ), second


def test_two_jobs_with_ddp_trials_side_by_side_on_one_machine_both_finish(ray_cluster, tmp_path):
    """Two Rays on one host, each running a job of DDP trials at the same time: an `hpo run` process with its own
    embedded Ray, and a job on this session's Ray (the older of the two, so the one that `ray_current_cluster`,
    which names the newest, would mislead). Every DDP trial's worker group starts and finishes. Ray Train looks
    its controller up through the State API, which, with more than one Ray on the host, is told which one
    (ray_support/ray_compat/train.py); the hang this guards against was reported from another machine, and on the 2-core
    test machine this passes either way."""
    import os
    import subprocess

    import psutil
    import yaml
    from conftest import HPO, spec_dict

    from orchestrator.api import run

    train = {"max_epochs": 1, "workers": 2, "cpus_per_worker": 0.5, "max_retries": 0, "trial_timeout_s": 240}
    specs = {}
    for name in ("left", "right"):
        data = spec_dict(name=name, storage=str(tmp_path / "runs"), search={"num_samples": 1}, train=train)
        specs[name] = tmp_path / f"{name}.yaml"
        specs[name].write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [*HPO, "run", str(specs["left"])],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # this session's job starts once the process's Ray is up: `hpo run` prints its results_uri after that
        first = proc.stdout.readline()
        assert first.startswith("results_uri: "), first
        family = [child.name() for child in psutil.Process(proc.pid).children(recursive=True)]
        assert "raylet" in family, f"the hpo run process started no Ray of its own: {family}"
        here = run(load_spec(specs["right"]), progress=lambda line: None)
    finally:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "finished 1 trials (1 completed)" in out, out
    assert here.statuses == {"completed": 1}, here


def test_the_driver_of_a_run_never_imports_torch(tmp_path):
    """The driver plans, runs Tune and records; only trial processes train. `hpo run` of a synthetic job in a
    process of its own (its own embedded Ray) ends with no torch module loaded in that process. Nor, for a random
    search, hyperopt (scipy.stats: 0.85 s) or MLflow (Ray's callback usage tag imports it: 1.1 s), which only
    cost the run's start."""
    import os
    import subprocess
    import sys

    import yaml

    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "no-torch",
                "workload": "synthetic",
                "search": {
                    "algorithm": "random",
                    "num_samples": 2,
                    "max_concurrent": 1,
                    "metric": "val_loss",
                    "mode": "min",
                    "space": {"x1": {"uniform": [0.0, 1.0]}},
                },
                "train": {"max_epochs": 2},
                "storage": str(tmp_path / "runs"),
            }
        )
    )
    code = (
        "import sys\nfrom orchestrator.cli import main\ncode = main(['run', sys.argv[1]])\n"
        "print('TORCH_MODULES', sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
        "print('HEAVY', sorted(m for m in ('hyperopt', 'mlflow', 'scipy.stats') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TORCH_MODULES []" in done.stdout, done.stdout[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]
