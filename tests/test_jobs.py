"""Every shipped job spec loads, validates and plans (litgpt-style: a test per shipped config)."""

from __future__ import annotations

import pytest

from conftest import ROOT
from orchestrator.runner import plan
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
