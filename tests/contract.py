"""The results contract, checked the way a user reads results: from storage, with pyarrow."""

from __future__ import annotations

import math

import pyarrow as pa

from orchestrator.results import CONFIG_PREFIX, load_results, load_trials
from orchestrator.results.layout import trial_index
from orchestrator.results.ops import stored_spec
from orchestrator.results.schema import GPU_MEM_PEAK, GPU_UTIL, REPORTED_AT
from orchestrator.storage import open_store
from orchestrator.train.determinism import trial_seed


def check_contract(summary, spec) -> tuple[pa.Table, pa.Table]:
    """Assert everything the foundation issue promises about a finished run; return (rows, trials)."""
    uri = summary.results_uri
    store = open_store(uri)
    resolved = stored_spec(uri)
    assert resolved.name == spec.name and resolved.seed == spec.seed
    rows, trials = load_results(uri), load_trials(uri)
    metric, mode = spec.search.primary.metric, spec.search.primary.mode
    metrics = [c.removeprefix("last_") for c in trials.column_names if c.startswith("last_")]  # all reported
    assert metric in metrics
    bounds = spec.search.bounds

    def feasible(row) -> bool:  # every constraint, written out here rather than taken from the product
        return all(
            row[b.metric] is not None
            and math.isfinite(row[b.metric])
            and (row[b.metric] <= b.bound if b.op == "<=" else row[b.metric] >= b.bound)
            for b in bounds
        )

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
            for m in metrics:
                assert math.isfinite(r[m]), (m, r)

    # A config column for every searched and fixed hyperparameter, holding the trial's values (a conditional
    # space's: null where the branch taken does not have it).
    space = spec.search.hyperparameters
    for name in list(space.names) + list(resolved.search.fixed):
        assert CONFIG_PREFIX + name in rows.column_names, name
    for name, value in spec.search.fixed.items():
        assert set(rows[CONFIG_PREFIX + name].to_pylist()) == {value}
    for name in space.names:
        dist = space.distribution(name)
        values = [v for v in rows[CONFIG_PREFIX + name].to_pylist() if v is not None or not space.conditional]
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
        allowed = [r[metric] for r in trial_rows if feasible(r)]
        assert t[f"best_{metric}"] == (pick(allowed) if allowed else None)
        if bounds:
            assert t["feasible"] == feasible(trial_rows[-1]), t
        assert t["stopped_early"] == (len(trial_rows) < spec.train.max_epochs)
        assert t["status"] == ("stopped_early" if t["stopped_early"] else "completed")
        assert t["trial_seed"] == trial_rows[0]["trial_seed"]
        for key in ("checkpoint", "best_checkpoint"):
            rel = t[key].removeprefix(store.uri + "/")
            assert rel.startswith(f"checkpoints/{t['trial_id']}/epoch-") and store.exists(rel), t[key]
        assert t["error"] is None

    # best = the best metric value over all (trial, iteration) rows that satisfy the constraints.
    allowed = [r for r in rows.to_pylist() if feasible(r)]
    best_value = pick(r[metric] for r in allowed)
    assert summary.best["metric"] == best_value
    best_rows = [r for r in allowed if r[metric] == best_value]
    assert (summary.best["trial_id"], summary.best["iteration"]) == (
        best_rows[0]["trial_id"],
        best_rows[0]["iteration"],
    )
    assert summary.best["config"]["lr"] == best_rows[0][CONFIG_PREFIX + "lr"]

    # Several objectives: the front is every finished, feasible trial whose last report no other such trial's
    # beats in one objective without losing in another; ranks peel fronts off one by one.
    objectives = spec.search.objectives
    if len(objectives) > 1:
        sign = {o.metric: (1 if o.mode == "min" else -1) for o in objectives}
        points = {
            t["trial_id"]: tuple(sign[o.metric] * by_trial[t["trial_id"]][-1][o.metric] for o in objectives)
            for t in trials.to_pylist()
            if t["status"] in ("completed", "stopped_early") and (not bounds or t["feasible"])
        }

        def beaten(p, others):
            return any(all(x <= y for x, y in zip(q, p, strict=True)) and q != p for q in others)

        rank, left = 0, dict(points)
        expected = {}
        while left:
            front = [k for k, p in left.items() if not beaten(p, left.values())]
            expected.update(dict.fromkeys(front, rank))
            left = {k: p for k, p in left.items() if k not in front}
            rank += 1
        for t in trials.to_pylist():
            assert t["pareto_rank"] == expected.get(t["trial_id"]), (
                t["trial_id"],
                t["pareto_rank"],
                expected,
            )
            assert t["on_front"] == (expected.get(t["trial_id"]) == 0)
        on_front = sorted(k for k, r in expected.items() if r == 0)
        assert sorted(p["trial_id"] for p in summary.front) == on_front and on_front
    else:
        assert summary.front is None
    return rows, trials


def deterministic_rows(rows: pa.Table) -> list[dict]:
    from orchestrator.results import RUN_VARYING_COLUMNS

    return rows.drop_columns(list(RUN_VARYING_COLUMNS)).to_pylist()


# What a report carries besides its metrics that differs between identical runs: its wall clocks, where its
# checkpoint went, what its GPU did (train/gpu_meter.py)
VOLATILE_REPORT_KEYS = (
    "epoch_time_s",
    REPORTED_AT,
    "checkpoint",
    "best_checkpoint",
    GPU_UTIL,
    GPU_MEM_PEAK,
)


def deterministic_reports(reports: list[dict]) -> list[dict]:
    """Reports as a reporter received them, less what differs between identical runs."""
    return [{k: v for k, v in r.items() if k not in VOLATILE_REPORT_KEYS} for r in reports]
