"""Every shipped job spec loads, validates and plans (litgpt-style: a test per shipped config)."""

from __future__ import annotations

import pytest
from conftest import ROOT

from orchestrator.api import plan
from orchestrator.results import load_trials
from orchestrator.spec import load_spec

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


def test_jobs_are_shipped():
    assert any(job.name == "digits-asha.yaml" for job in JOBS)


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_shipped_job_loads_and_plans(path, tmp_path):
    spec = load_spec(path)
    the_plan = plan(spec, str(tmp_path / spec.name / "run"))
    assert the_plan.num_samples == spec.search.num_samples
    assert the_plan.search_alg is not None and the_plan.scheduler is not None
    assert set(the_plan.spec.search.fixed) >= set(spec.search.fixed)
    assert the_plan.trial_plan.max_epochs == spec.train.max_epochs
    assert not (tmp_path / spec.name).exists()  # planning writes nothing


def _readme_yaml_blocks() -> list[str]:
    import re

    return re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_every_spec_in_the_readme_validates():
    """The README's spec reference (every field) and its `kind: ensemble` example are real specs."""
    from orchestrator.spec import EnsembleSpec, JobSpec, parse_spec
    from orchestrator.spec.yaml_load import load_yaml_text

    specs = [load_yaml_text(b) for b in _readme_yaml_blocks()]
    specs = [s for s in specs if isinstance(s, dict) and ("search" in s or s.get("kind") == "ensemble")]
    parsed = [parse_spec(s, check_workload=s.get("workload") == "digits-mlp") for s in specs]
    kinds = {type(p) for p in parsed}
    assert kinds == {JobSpec, EnsembleSpec}
    reference = next(p for p in parsed if isinstance(p, JobSpec) and p.name == "digits-asha")
    assert reference.search.role("hidden") == "scientific" and reference.train.max_retries == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-cnn.yaml", "charlm.yaml", "digits-accuracy-vs-size.yaml"])
def test_shipped_custom_loop_jobs_run_briefly(name, ray_cluster, tmp_path, cli):
    """The shipped jobs whose workloads bring their own loop, cut to 2 trials x 2 epochs: they run and obey the
    results contract (their full-length figures are in docs/benchmarks.md)."""
    from contract import check_contract

    from orchestrator.api import run
    from orchestrator.spec import parse_spec
    from orchestrator.spec.yaml_load import load_yaml_text

    data = load_yaml_text((ROOT / "jobs" / name).read_text())
    data["search"].update(num_samples=2, max_concurrent=2)
    data["train"]["max_epochs"] = 2
    data["storage"] = str(tmp_path)
    spec = parse_spec(data)
    summary = run(spec)
    check_contract(summary, spec)
    assert summary.statuses.get("completed", 0) + summary.statuses.get("stopped_early", 0) == 2
    if name == "digits-cnn.yaml":  # its own loop, and build_model/load_data: ensembling works on it
        from orchestrator.practice.ensemble import build_ensemble

        result = build_ensemble(summary.results_uri, top_k=2)
        assert [m["trial_id"] for m in result.members] and 0.5 < result.ensemble["val_accuracy"] <= 1.0
    if name == "digits-accuracy-vs-size.yaml":  # two objectives: analyze draws the front, ensembles pick one
        import json

        from orchestrator.practice.analyze import analyze_run

        report = analyze_run(summary.results_uri, tmp_path / "analysis")
        assert {"pareto_front.png", "hypervolume.png"} <= {p.rsplit("/", 1)[-1] for p in report.plots}
        assert any(line.startswith("Pareto front on val_f1 (max), params_k (min): ") for line in report.lines)
        assert any(line.startswith("hypervolume ") for line in report.lines), report.lines
        proc = cli(
            "ensemble", summary.results_uri, "--metric", "params_k", "--top-k", "1", "--output", "json"
        )
        assert proc.returncode == 0, proc.stderr
        trials = [t for t in load_trials(summary.results_uri).to_pylist() if t["feasible"]]
        smallest = min(trials, key=lambda t: (t["last_params_k"], t["trial_id"]))
        assert [m["trial_id"] for m in json.loads(proc.stdout.splitlines()[-1])["members"]] == [
            smallest["trial_id"]
        ]
        proc = cli("ensemble", summary.results_uri, "--metric", "val_loss")
        assert proc.returncode == 2 and "metric 'val_loss': not an objective of this run" in proc.stderr
        ensemble = tmp_path / "ensemble.yaml"  # the same, as a kind: ensemble spec
        ensemble.write_text(
            f"kind: ensemble\nname: e\nrun: {summary.results_uri}\ntop_k: 1\nmetric: val_loss\n"
        )
        proc = cli("run", str(ensemble))
        assert proc.returncode == 2 and "metric 'val_loss': not an objective of this run" in proc.stderr
