"""`hpo ensemble` on a held-out search: the top-3 ensemble against its best member, on the test split."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import hpo, spec_dict

from orchestrator.api import run
from orchestrator.practice.ensemble import build_ensemble
from orchestrator.results import load_trials
from orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow

# Held out: none of the ensemble code was tuned on this search. sanity: true runs the checks first.
HELD_OUT = dict(
    name="ens-heldout",
    seed=12,
    sanity=True,
    train={"max_epochs": 12},
    search={
        "num_samples": 12,
        "max_concurrent": 2,
        "metric": "val_loss",
        "mode": "min",
        "space": {
            "lr": {"loguniform": [1.0e-3, 3.0e-2]},
            "hidden": {"choice": [32, 64, 128]},
            "dropout": {"uniform": [0.0, 0.3]},
        },
    },
)


@pytest.fixture(scope="module")
def held_out_run(ray_cluster, tmp_path_factory):
    spec = parse_spec(spec_dict(storage=str(tmp_path_factory.mktemp("ens")), **HELD_OUT))
    summary = run(spec, progress=lambda line: None)
    assert summary.statuses == {"completed": 12}
    return summary


def test_top3_ensemble_is_at_least_as_good_as_its_best_member_on_test(held_out_run, capsys):
    code, out, err = hpo(capsys, "ensemble", held_out_run.results_uri, "--top-k", "3", "--output", "json")
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    ens, best = result["ensemble"], result["best_single"]
    assert set(ens) == set(best) - {"trial_id"} == {"val_accuracy", "test_accuracy", "val_loss", "test_loss"}
    ranked = sorted(load_trials(held_out_run.results_uri).to_pylist(), key=lambda t: t["best_val_loss"])
    assert [m["trial_id"] for m in result["members"]] == [t["trial_id"] for t in ranked[:3]]
    assert best["trial_id"] == ranked[0]["trial_id"]  # the member with the best validation loss
    print(
        f"ensemble test acc {ens['test_accuracy']:.4f} loss {ens['test_loss']:.4f}; best single "
        f"{best['test_accuracy']:.4f} / {best['test_loss']:.4f}"
    )
    assert ens["test_accuracy"] >= best["test_accuracy"]
    assert ens["test_loss"] < best["test_loss"]
    table = pq.read_table(f"{held_out_run.results_uri}/ensemble.parquet")
    assert table["role"].to_pylist() == ["ensemble", "best_single", "member", "member", "member"]


def test_greedy_selection_never_does_worse_on_validation_than_the_best_single_model(held_out_run):
    result = build_ensemble(held_out_run.results_uri, top_k=5, method="greedy")
    assert result.ensemble["val_loss"] <= result.best_single["val_loss"]
    assert abs(sum(m["weight"] for m in result.members) - 1) < 1e-9
    assert (
        pq.read_table(f"{held_out_run.results_uri}/ensemble.parquet").schema.metadata[b"hpo.method"]
        == b"greedy"
    )


def test_ensemble_of_a_path_without_a_run_is_a_one_line_error(tmp_path, capsys):
    code, _, err = hpo(capsys, "ensemble", str(tmp_path), "--top-k", "3")
    assert code == 2 and "spec.yaml" in err and "Traceback" not in err
