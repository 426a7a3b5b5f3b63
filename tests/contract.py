"""The results contract, checked the way a user reads results: from storage, with pyarrow."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.results import CONFIG_PREFIX, load_results, load_trials
from orchestrator.results.layout import trial_index
from orchestrator.results.ops import stored_spec
from orchestrator.storage import open_store
from orchestrator.train.determinism import trial_seed


def check_contract(summary, spec) -> tuple[pa.Table, pa.Table]:
    """Assert everything the foundation issue promises about a finished run; return (rows, trials)."""
    uri = summary.results_uri
    store = open_store(uri)
    resolved = stored_spec(uri)
    assert resolved.name == spec.name and resolved.seed == spec.seed
    rows, trials = load_results(uri), load_trials(uri)
    metric, mode = spec.search.metric, spec.search.mode

    # One row per (trial, iteration), iterations 1..n without gaps.
    keys = list(zip(rows["trial_id"].to_pylist(), rows["iteration"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys))
    by_trial: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        by_trial.setdefault(row["trial_id"], []).append(row)
    for trial_id, trial_rows in by_trial.items():
        assert [r["iteration"] for r in trial_rows] == list(range(1, len(trial_rows) + 1))
        assert len(trial_rows) <= spec.train.max_epochs
        assert {r["trial_seed"] for r in trial_rows} == {trial_seed(spec.seed, trial_index(trial_id))}
        for r in trial_rows:
            for m in ("train_loss", "val_loss"):
                assert math.isfinite(r[m])

    # A config column for every searched and fixed hyperparameter, holding the trial's values.
    for name in list(spec.search.space) + list(resolved.search.fixed):
        assert CONFIG_PREFIX + name in rows.column_names, name
    for name, value in spec.search.fixed.items():
        assert set(rows[CONFIG_PREFIX + name].to_pylist()) == {value}
    for name, dist in spec.search.space.items():
        values = rows[CONFIG_PREFIX + name].to_pylist()
        assert all(dist.contains(v) for v in values), (name, dist.describe(), values)
    for column in ("epoch_time_s", "time_total_s", "timestamp"):
        assert column in rows.column_names

    # trials.parquet agrees with the rows.
    assert sorted(trials["trial_id"].to_pylist()) == sorted(by_trial) == trials["trial_id"].to_pylist()
    assert summary.num_trials == trials.num_rows
    pick = min if mode == "min" else max
    for t in trials.to_pylist():
        trial_rows = by_trial[t["trial_id"]]
        assert t["iterations"] == len(trial_rows)
        assert t[f"best_{metric}"] == pick(r[metric] for r in trial_rows)
        assert t["stopped_early"] == (len(trial_rows) < spec.train.max_epochs)
        assert t["status"] == ("stopped_early" if t["stopped_early"] else "completed")
        assert t["trial_seed"] == trial_rows[0]["trial_seed"]
        for key in ("checkpoint", "best_checkpoint"):
            rel = t[key].removeprefix(store.uri + "/")
            assert rel.startswith(f"checkpoints/{t['trial_id']}/epoch-") and store.exists(rel), t[key]
        assert t["error"] is None

    # best = the best metric value over all (trial, iteration) rows.
    best_value = pc.min(rows[metric]).as_py() if mode == "min" else pc.max(rows[metric]).as_py()
    assert summary.best["metric"] == best_value
    best_rows = [r for r in rows.to_pylist() if r[metric] == best_value]
    assert (summary.best["trial_id"], summary.best["iteration"]) == (
        best_rows[0]["trial_id"],
        best_rows[0]["iteration"],
    )
    assert summary.best["config"]["lr"] == best_rows[0][CONFIG_PREFIX + "lr"]
    return rows, trials


def deterministic_rows(rows: pa.Table) -> list[dict]:
    from orchestrator.results import RUN_VARYING_COLUMNS

    return rows.drop_columns(list(RUN_VARYING_COLUMNS)).to_pylist()
