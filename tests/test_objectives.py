"""Several objectives and constraints: the Pareto ranks, the hypervolume, the spec's refusals, and the columns
a run's tables gain (the end-to-end runs are test_jobs.py's shipped 2-objective job and test_run.py)."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pytest
from conftest import spec_dict

from orchestrator.errors import SpecError
from orchestrator.results import ResultsSchema
from orchestrator.results.reader import best_row, pareto_front
from orchestrator.search.objectives import Constraint, dominates, hypervolume, pareto_ranks, point_of
from orchestrator.spec import parse_spec


def _naive_ranks(points):
    left = {i: p for i, p in enumerate(points) if p is not None}
    ranks, rank = [None] * len(points), 0
    while left:
        front = [i for i, p in left.items() if not any(dominates(q, p) for q in left.values())]
        for i in front:
            ranks[i] = rank
            del left[i]
        rank += 1
    return ranks


def test_pareto_ranks_match_peeling_fronts_one_by_one():
    rng = random.Random(3)
    for n, k in itertools.product((1, 2, 7, 40), (2, 3)):
        points = [
            None if rng.random() < 0.1 else tuple(rng.choice((0.0, 0.5, 1.0, rng.random())) for _ in range(k))
            for _ in range(n)
        ]
        assert pareto_ranks(points) == _naive_ranks(points)
    assert pareto_ranks([(1.0, 1.0), (1.0, 1.0), (2.0, 0.0)]) == [0, 0, 0]  # equal points share a rank
    assert pareto_ranks([None, None]) == [None, None]


def test_hypervolume_is_exact_for_known_shapes():
    assert hypervolume([(0.0, 0.0)], (1.0, 1.0)) == 1.0
    assert hypervolume([(0.5, 0.0), (0.0, 0.5)], (1.0, 1.0)) == pytest.approx(0.75)
    assert hypervolume([(0.5, 0.5), (0.6, 0.6)], (1.0, 1.0)) == pytest.approx(
        0.25
    )  # a dominated point adds 0
    assert hypervolume([(2.0, 0.0)], (1.0, 1.0)) == 0.0  # beyond the reference: nothing
    assert hypervolume([(0.0, 0.0, 0.0)], (1.0, 2.0, 3.0)) == pytest.approx(6.0)
    assert hypervolume([(0.5, 0.0, 0.0), (0.0, 0.5, 0.0)], (1.0, 1.0, 1.0)) == pytest.approx(0.75)


def test_constraints_parse_hold_and_refuse_what_they_cannot_read():
    bound = Constraint.parse(" latency_ms<=5 ")
    assert (bound.metric, bound.op, bound.bound, str(bound)) == ("latency_ms", "<=", 5.0, "latency_ms <= 5")
    assert (
        bound.holds(5.0) and not bound.holds(5.1) and not bound.holds(float("nan")) and not bound.holds(None)
    )
    assert Constraint.parse("acc >= 0.9").holds(0.95)
    for bad in ("latency_ms < 5", "latency_ms <= fast", "<= 5", "latency_ms <= inf", 5):
        with pytest.raises(ValueError, match="is not a constraint; write METRIC <= NUMBER"):
            Constraint.parse(bad)


def test_point_of_minimizes_every_objective():
    spec = parse_spec(
        spec_dict(search={"metric": ["val_loss", "val_accuracy"], "mode": ["min", "max"]}),
        check_workload=False,
    )
    assert point_of({"val_loss": 0.5, "val_accuracy": 0.9}, spec.search.objectives) == (0.5, -0.9)
    assert point_of({"val_loss": 0.5, "val_accuracy": float("nan")}, spec.search.objectives) is None


@pytest.mark.parametrize(
    "search, message",
    [
        (
            {"metric": ["val_loss", "val_accuracy"], "mode": ["min"]},
            "search: mode: 1 mode(s) for 2 metric(s); give one per metric (e.g. [min, min]) or one for all",
        ),
        ({"metric": []}, "search.metric: is an empty list; name at least one metric"),
        (
            {"metric": ["val_loss", "val_loss"]},
            "search.metric: 'val_loss' is listed twice; each objective once",
        ),
        (
            {"metric": ["val_loss", "nope"]},
            "search.metric: 'nope' is not reported by workload digits-mlp",
        ),
        (
            {"constraints": ["val_los <= 1"]},
            "search.constraints: 'val_los <= 1' bounds 'val_los', which workload digits-mlp does not report "
            "(did you mean 'val_loss'?",
        ),
        (
            {"constraints": ["val_loss = 1"]},
            "search.constraints: 'val_loss = 1' is not a constraint; write METRIC <= NUMBER or METRIC >= NUMBER",
        ),
        (
            {"metric": ["val_loss", "val_accuracy"], "mode": ["min", "max"], "algorithm": "hyperopt"},
            "search: algorithm: hyperopt optimizes one metric, and metric lists 2; use one of random, grid, "
            "quasirandom, tpe, motpe, nsga2",
        ),
        (
            {"metric": ["val_loss", "val_accuracy"], "mode": ["min", "max"], "algorithm": "gp"},
            "search: algorithm: gp optimizes one metric",
        ),
    ],
)
def test_bad_objectives_and_constraints_are_refused_in_one_line(search, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(search=search))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_pareto_asha_keeps_the_top_of_each_rung_by_front_and_crowding():
    """At each rung a trial goes on if it is in the top 1/reduction_factor of the points that reached it, itself
    included, ordered by Pareto rank, then crowding distance: trade-offs survive, dominated points stop."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from orchestrator.search.objectives import Objective
    from orchestrator.tuning.pareto_asha import ParetoAsha

    asha = ParetoAsha(
        objectives=(Objective("loss", "min"), Objective("acc", "max")),
        time_attr="training_iteration",
        max_t=8,
        grace_period=1,
        reduction_factor=2,
    )
    assert [m for m, _ in asha.rungs] == [4, 2, 1]

    def report(name, epoch, loss, acc):
        return asha.on_trial_result(
            None, SimpleNamespace(trial_id=name), {"training_iteration": epoch, "loss": loss, "acc": acc}
        )

    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    assert report("a", 1, 0.5, 0.8) == go  # the first at a rung always goes on
    assert report("b", 1, 0.6, 0.7) == stop  # dominated by a; 1 of 2 goes on
    assert report("c", 1, 0.2, 0.6) == go  # a trade-off: a and c share the front; 2 of 3 go on
    assert report("d", 1, float("nan"), 0.9) == stop  # no finite point: last
    assert (
        report("a", 2, 0.4, 0.85) == go and report("a", 3, 0.4, 0.85) == go
    )  # between rungs: nothing to judge
    # a report without the epoch counter (Tune's bookkeeping) is let through
    assert asha.on_trial_result(None, SimpleNamespace(trial_id="e"), {"loss": 9.0}) == go


def test_several_objectives_schedule_with_fifo_or_pareto_asha():
    from orchestrator.tuning.forms import ScheduledJob, tune_scheduler
    from orchestrator.tuning.pareto_asha import ParetoAsha

    spec = parse_spec(
        spec_dict(
            search={"metric": ["val_loss", "val_accuracy"], "mode": ["min", "max"]},
            scheduler={"type": "asha", "grace_period": 1},
        )
    )
    built = tune_scheduler(
        spec.scheduler.kind,
        spec.scheduler.settings(),
        ScheduledJob(spec.train.max_epochs, "training_iteration", spec.search.objectives),
    )
    assert isinstance(built, ParetoAsha) and [m for m, _ in built.rungs] == [1]


def test_one_objective_specs_and_tables_are_as_before():
    spec = parse_spec(spec_dict())
    assert spec.search.objectives[0].metric == "val_loss" and len(spec.search.objectives) == 1
    schema = ResultsSchema.for_spec(spec, ("train_loss", "val_loss", "val_accuracy"))
    names = schema.trials_schema().names
    assert "pareto_rank" not in names and "feasible" not in names
    assert b"hpo.objectives" not in schema.trials_schema().metadata


def _trials(schema, records):
    base = {name: None for name in schema.trials_schema().names}
    table = pa.Table.from_pylist([{**base, **r} for r in records], schema=schema.trials_schema())
    return schema.with_front(table)


def test_the_front_counts_finished_feasible_trials_by_their_last_report():
    spec = parse_spec(
        spec_dict(
            search={
                "metric": ["val_loss", "val_accuracy"],
                "mode": ["min", "max"],
                "constraints": ["train_loss <= 1.0"],
            }
        )
    )
    schema = ResultsSchema.for_spec(spec, ("train_loss", "val_loss", "val_accuracy"))
    table = _trials(
        schema,
        [
            {
                "trial_id": "trial_0000",
                "status": "completed",
                "last_val_loss": 0.3,
                "last_val_accuracy": 0.9,
                "feasible": True,
            },
            {
                "trial_id": "trial_0001",
                "status": "completed",
                "last_val_loss": 0.2,
                "last_val_accuracy": 0.8,
                "feasible": True,
            },
            {
                "trial_id": "trial_0002",
                "status": "completed",
                "last_val_loss": 0.4,
                "last_val_accuracy": 0.7,
                "feasible": True,
            },
            # would dominate everything, but breaks the constraint
            {
                "trial_id": "trial_0003",
                "status": "completed",
                "last_val_loss": 0.1,
                "last_val_accuracy": 0.99,
                "feasible": False,
            },
            {
                "trial_id": "trial_0004",
                "status": "running",
                "last_val_loss": 0.0,
                "last_val_accuracy": 1.0,
                "feasible": True,
            },
            {
                "trial_id": "trial_0005",
                "status": "stopped_early",
                "last_val_loss": 0.5,
                "last_val_accuracy": 0.95,
                "feasible": True,
            },
        ],
    )
    assert table["pareto_rank"].to_pylist() == [0, 0, 1, None, None, 0]
    assert table["on_front"].to_pylist() == [True, True, False, False, False, True]
    front = pareto_front(table)
    assert [p["trial_id"] for p in front] == ["trial_0001", "trial_0000", "trial_0005"]  # by val_loss
    assert front[0]["values"] == {"val_loss": 0.2, "val_accuracy": 0.8}


def test_a_report_that_breaks_a_constraint_is_never_the_best():
    spec = parse_spec(spec_dict(search={"constraints": ["val_accuracy >= 0.5"]}))
    schema = ResultsSchema.for_spec(spec, ("train_loss", "val_loss", "val_accuracy"))
    rows = pa.Table.from_pylist(
        [
            {
                "trial_id": "trial_0000",
                "iteration": 1,
                "val_loss": 0.1,
                "val_accuracy": 0.4,
                "train_loss": 1.0,
            },
            {
                "trial_id": "trial_0000",
                "iteration": 2,
                "val_loss": 0.3,
                "val_accuracy": 0.6,
                "train_loss": 1.0,
            },
            {
                "trial_id": "trial_0001",
                "iteration": 1,
                "val_loss": 0.2,
                "val_accuracy": None,
                "train_loss": 1.0,
            },
        ],
        schema=schema.rows_schema(),
    )
    assert (best_row(rows)["trial_id"], best_row(rows)["iteration"]) == ("trial_0000", 2)
    kept = schema.trial_rows()
    for row in rows.to_pylist()[:2]:
        kept.add(row)
    assert kept.best == (0.3, 2)


START = [{"lr": 0.01, "hidden": 32}, {"lr": 0.002, "hidden": 16}]


@pytest.mark.parametrize(
    "search, message",
    [
        (
            {"start_with": [{"lr": 0.01}]},
            "search: start_with[0]: gives no value for 'hidden'; a start config gives",
        ),
        (
            {"start_with": [{"lr": 0.01, "hiden": 32}]},
            "search: start_with[0].hiden: is not searched; a start config gives the searched hyperparameters "
            "(did you mean 'hidden'?",
        ),
        (
            {"start_with": [{"lr": 0.01, "hidden": 32, "batch_size": 64}]},
            "search: start_with[0].batch_size: is fixed (search.fixed)",
        ),
        (
            {"start_with": [{"lr": 0.5, "hidden": 32}]},
            "search: start_with[0].lr: 0.5 is not a value of loguniform [0.001, 0.1]; give one it can take",
        ),
        (
            {"start_with": [{"lr": 0.01, "hidden": True}]},
            "search: start_with[0].hidden: True is not a value of choice [16, 32]; give one it can take",
        ),
        (
            {"start_with": START * 2, "num_samples": 3},
            "search: start_with: 4 configs, and num_samples is 3; raise num_samples or give fewer",
        ),
        (
            {"start_with": START, "algorithm": "grid", "space": {"hidden": {"choice": [16, 32]}}},
            "search: start_with: algorithm grid runs every combination already",
        ),
        (
            {"warm_start": ["./results/t-job/20261201-000000-ab12"]},
            "search: warm_start: algorithm random does not take earlier results as history; use one of tpe, "
            "motpe, nsga2, cmaes, gp",
        ),
        (
            {"warm_start": ["ftp://host/run"], "algorithm": "tpe"},
            "search.warm_start: scheme 'ftp://' is not supported",
        ),
    ],
)
def test_bad_start_configs_are_refused_in_one_line(search, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(search=search))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_start_configs_are_stated_as_their_distributions_state_them():
    spec = parse_spec(
        spec_dict(
            search={
                "space": {"lr": {"uniform": [0.5, 2]}, "hidden": {"choice": [16, 32]}},
                "start_with": [{"lr": 1, "hidden": 16}],
            }
        )
    )
    assert spec.search.start_points() == [{"lr": 1.0, "hidden": 16}]
    assert type(spec.search.start_points()[0]["lr"]) is float


def test_importance_is_per_objective():
    """hpo analyze's fANOVA importances, one set per objective, fit to the finished feasible trials' points: an
    objective that depends on x alone puts x first; one that depends on y alone, y."""
    from orchestrator.practice.analyze import importances

    spec = parse_spec(
        spec_dict(
            search={
                "metric": ["val_loss", "val_accuracy"],
                "mode": ["min", "max"],
                "space": {"lr": {"uniform": [0.01, 1.0]}, "hidden": {"choice": [16, 32, 64]}},
            }
        )
    )
    rng = random.Random(0)
    trials = []
    for i in range(30):
        lr, hidden = rng.uniform(0.01, 1.0), rng.choice([16, 32, 64])
        trials.append(
            {
                "trial_id": f"trial_{i:04d}",
                "status": "completed",
                "config/lr": lr,
                "config/hidden": hidden,
                "last_val_loss": lr**2,
                "last_val_accuracy": hidden / 64 + rng.uniform(0, 0.01),
            }
        )
    found, fitted = importances(trials, spec)
    assert fitted == {"val_loss": 30, "val_accuracy": 30}
    assert next(iter(found["val_loss"])) == "lr" and found["val_loss"]["lr"] > 0.8, found
    assert next(iter(found["val_accuracy"])) == "hidden" and found["val_accuracy"]["hidden"] > 0.8, found
    assert importances(trials[:2], spec) == ({}, {})
