"""Conditional search spaces without Ray's cluster: parsing and its refusals, the keyed form searchers see, every
algorithm's proposals (only the branch taken's hyperparameters, in range, start configs first, same seed same
proposals), pinning a resumed trial to another branch, the tables' columns, and analysis of inactive values."""

from __future__ import annotations

import math
import random

import pytest
from conftest import spec_dict
from ray.tune.experiment import Experiment

from orchestrator.practice.analyze import _boundary_warnings, importances, isolation
from orchestrator.results.schema import CONFIG_PREFIX, ResultsSchema
from orchestrator.search import ALGORITHMS
from orchestrator.search.distributions import LogUniform, Uniform
from orchestrator.spec import SpecError, parse_spec
from orchestrator.tuning.fast_forward import fast_forward
from orchestrator.tuning.tune_search import build_search, tune_num_samples

ADAM_LR = {"loguniform": [1.0e-4, 1.0e-2]}
SGD_LR = {"loguniform": [1.0e-3, 1.0e-1]}
MOMENTUM = {"uniform": [0.8, 0.99]}
SPACE = {
    "optimizer": {"choice": {"adam": {"lr": ADAM_LR}, "sgd": {"lr": SGD_LR, "momentum": MOMENTUM}}},
    "hidden": {"choice": [16, 32]},
}
START = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "hidden": 16}
GRID_SPACE = {
    "optimizer": {
        "choice": {"adam": {"lr": {"choice": [1e-3, 1e-2]}}, "sgd": {"momentum": {"choice": [0.9, 0.95]}}}
    },
    "hidden": {"choice": [16, 32]},
}


def _spec(**search):
    return parse_spec(spec_dict(search={"space": SPACE, **search}))


def _proposals(spec, n: int, pinned: dict | None = None) -> list[dict]:
    """The configs of the first n trials the spec's search creates (each told a result before the next)."""
    search_alg, param_space, _ = build_search(spec)
    search_alg.set_search_properties("val_loss", "min", param_space)
    search_alg.add_configurations(
        [
            Experiment(
                "x", lambda config: None, config=param_space, num_samples=tune_num_samples(spec, search_alg)
            )
        ]
    )
    if pinned:
        fast_forward(search_alg, None, {}, pinned)
    configs = []
    for i in range(n):
        trial = search_alg.next_trial()
        if trial is None:
            break
        configs.append(dict(trial.config))
        search_alg.on_trial_complete(
            trial.trial_id, result={"val_loss": 1.0 / (i + 1), "training_iteration": 1}
        )
    return configs


def _valid(config: dict) -> bool:
    """Whether a config has exactly its branch's hyperparameters, each in its branch's range."""
    if config["optimizer"] == "adam":
        return set(config) == {"optimizer", "lr", "hidden"} and 1e-4 <= config["lr"] <= 1e-2
    return (
        set(config) == {"optimizer", "lr", "momentum", "hidden"}
        and 1e-3 <= config["lr"] <= 1e-1
        and 0.8 <= config["momentum"] <= 0.99
    )


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "grid"])
def test_every_algorithm_proposes_only_the_branch_taken(algorithm):
    spec = _spec(algorithm=algorithm, num_samples=12, max_concurrent=1, start_with=[START])
    configs = _proposals(spec, 12)
    assert len(configs) == 12 and configs[0] == START, configs
    assert all(_valid(c) for c in configs), configs
    assert {c["optimizer"] for c in configs} == {"adam", "sgd"}, configs  # both branches are searched
    assert _proposals(spec, 12) == configs  # same seed, same proposals


def test_grid_enumerates_each_branchs_own_combinations():
    spec = parse_spec(spec_dict(search={"algorithm": "grid", "num_samples": 2, "space": GRID_SPACE}))
    assert spec.search.num_trials() == (2 + 2) * 2 * 2
    configs = _proposals(spec, 100)
    once = [{"optimizer": "adam", "lr": lr, "hidden": h} for lr in (1e-3, 1e-2) for h in (16, 32)] + [
        {"optimizer": "sgd", "momentum": m, "hidden": h} for m in (0.9, 0.95) for h in (16, 32)
    ]
    assert configs == once * 2


@pytest.mark.parametrize("algorithm", ["hyperopt", "tpe", "nsga2"])
def test_a_resumed_trial_is_pinned_to_its_recorded_branch(algorithm):
    """The dead run gave trial 2 another branch than the search now proposes: it runs with the recorded config,
    and the proposals after it are the ones the searcher makes having learnt it there."""
    spec = _spec(algorithm=algorithm, num_samples=8, max_concurrent=1)
    free = _proposals(spec, 4)
    recorded = (
        {"optimizer": "adam", "lr": 0.005, "hidden": 32}
        if free[2]["optimizer"] == "sgd"
        else {"optimizer": "sgd", "lr": 0.05, "momentum": 0.85, "hidden": 32}
    )
    space = spec.search.hyperparameters
    pinned = _proposals(spec, 4, pinned={2: space.keyed(recorded)})
    assert pinned[:2] == free[:2] and pinned[2] == recorded and all(_valid(c) for c in pinned), pinned


def test_keys_configs_and_rows_translate_both_ways():
    space = _spec().search.hyperparameters
    assert [leaf.key for leaf in space.leaves] == [
        "optimizer",
        "lr|optimizer=adam",
        "lr|optimizer=sgd",
        "momentum|optimizer=sgd",
        "hidden",
    ]
    assert space.names == ("optimizer", "lr", "momentum", "hidden") and space.conditional
    keyed = space.keyed(START)
    assert keyed == {
        "optimizer": "sgd",
        "lr|optimizer=sgd": 0.01,
        "momentum|optimizer=sgd": 0.9,
        "hidden": 16,
    }
    assert space.config_of(keyed) == START
    # a searcher that samples every leaf: the config keeps the active ones
    every = space.keyed({"optimizer": "adam", "lr": 0.001, "hidden": 16}, fill=True)
    assert set(every) == {leaf.key for leaf in space.leaves}
    assert space.config_of(every) == {"optimizer": "adam", "lr": 0.001, "hidden": 16}
    # a stored row: nulls where inactive
    row = {"optimizer": "adam", "lr": 0.001, "momentum": None, "hidden": 16}
    assert space.from_row(row) == {"optimizer": "adam", "lr": 0.001, "hidden": 16}
    assert space.middle() == {
        "optimizer": "sgd",
        "lr": math.sqrt(1e-3 * 1e-1),
        "momentum": 0.895,
        "hidden": 32,
    }
    # analysis sees one distribution per name: the hull of lr's two ranges
    assert space.distribution("lr") == LogUniform(loguniform=[1e-4, 1e-1])
    assert space.distribution("momentum") == Uniform(uniform=[0.8, 0.99])
    mixed = parse_spec(
        spec_dict(
            search={
                "space": {
                    "optimizer": {
                        "choice": {
                            "adam": {"lr": {"choice": [0.002, 0.02]}},
                            "sgd": {"lr": {"uniform": [0.01, 0.1]}},
                        }
                    }
                }
            }
        )
    )
    assert mixed.search.hyperparameters.distribution("lr") == Uniform(
        uniform=[0.002, 0.1]
    )  # a choice's values


def test_a_flat_space_is_searched_as_before():
    spec = parse_spec(spec_dict())
    space = spec.search.hyperparameters
    assert not space.conditional and [leaf.key for leaf in space.leaves] == ["lr", "hidden"]
    assert space.config_of({"lr": 0.01, "hidden": 16}) == {"lr": 0.01, "hidden": 16}


def test_a_name_in_several_branches_is_one_nullable_column():
    spec = _spec()
    schema = ResultsSchema.for_spec(spec, ("train_loss", "val_loss", "val_accuracy"))
    columns = [name for name, _ in schema.config]
    assert columns[:4] == ["optimizer", "lr", "momentum", "hidden"]
    assert (
        "momentum" not in spec.resolved(_workload()).search.fixed
    )  # searched: no default joins an adam trial
    row = schema.row(
        "trial_0000", {"epoch": 1, "trial_seed": 1, "val_loss": 0.5}, {"optimizer": "adam", "lr": 0.001}
    )
    assert row[CONFIG_PREFIX + "momentum"] is None and row[CONFIG_PREFIX + "lr"] == 0.001


def _workload():
    from orchestrator.workloads import resolve_workload

    return resolve_workload("digits-mlp")


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"optimizer": {"choice": {"adam": {}, "sgd": {"lr": SGD_LR}}}},
            "search.space.optimizer.choice: branch 'adam' is empty; give it at least one hyperparameter",
        ),
        (
            {"optimizer": {"choice": {"adam": None}}},
            "search.space.optimizer.choice: branch 'adam' is empty",
        ),
        (
            {"optimizer": {"choice": {1: {"lr": SGD_LR}}}},
            "search.space.optimizer.choice: branch name 1 is not a string (int); quote it ('1')",
        ),
        (
            {"optimizer": {"choice": {}}},
            "search.space.optimizer.choice: is an empty mapping; give at least one",
        ),
        (
            {"lr": SGD_LR, "optimizer": {"choice": {"adam": {"lr": ADAM_LR}}}},
            "search: space: 'lr' is searched twice where both can be active (at the top level, and when "
            "optimizer is adam)",
        ),
        (
            {"optimizer": {"choice": {"adam": {"lr": ADAM_LR}, "sgd": {"lr": {"randint": [1, 3]}}}}},
            "search: space: 'lr' takes values of different types in different branches (float, int)",
        ),
        (
            {"optimizer": {"choice": {"adam": {"lr": {"logunifrom": [1e-4, 0.1]}}}}},
            "search.space.optimizer.choice.adam.lr: unknown distribution 'logunifrom' (did you mean 'loguniform'?",
        ),
        (
            {"optimizer": {"choice": {"adam": {"lr": {"loguniform": [1, 0.1]}}}}},
            "search.space.optimizer.choice.adam.lr.loguniform: loguniform needs 0 < low < high",
        ),
        (
            {"optimizer": {"choice": {"adam": {"lrr": ADAM_LR}}}},
            "search.space.lrr: workload digits-mlp has no such hyperparameter (did you mean 'lr'?",
        ),
        (
            {"optimizer": {"choice": {"adagrad": {"lr": ADAM_LR}}}},
            "search.space.optimizer: 'adagrad' is not allowed (allowed: adam, adamw, sgd)",
        ),
        (
            {"optimizer": {"choice": {"adam": {"lr": {"uniform": [0.0, 1.0]}}}}},
            None,  # grid below: an infinite leaf inside a branch is named with its branch
        ),
    ],
)
def test_bad_conditional_spaces_are_refused_in_one_line(space, message):
    if message is None:
        message = (
            "search: grid search needs every hyperparameter to be a choice or to take at most 10000 values "
            "(quniform, randint, lograndint, choice); space.lr (when optimizer is adam) is uniform [0.0, 1.0]"
        )
        search = {"space": space, "algorithm": "grid"}
    else:
        search = {"space": space}
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(search=search))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "start, message",
    [
        (
            {**START, "optimizer": "adam"},
            "search: start_with[0].momentum: is active only when optimizer is sgd; leave it out of this config",
        ),
        (
            {"optimizer": "sgd", "lr": 0.01, "hidden": 16},
            "search: start_with[0]: gives no value for 'momentum' (active when optimizer is sgd)",
        ),
        (
            {"optimizer": "rmsprop", "hidden": 16},
            "search: start_with[0].optimizer: 'rmsprop' is not a value of choice ['adam', 'sgd']",
        ),
        (
            {**START, "lr": 1e-4},
            "search: start_with[0].lr: 0.0001 is not a value of loguniform [0.001, 0.1]",
        ),
    ],
)
def test_bad_conditional_start_configs_are_refused_in_one_line(start, message):
    with pytest.raises(SpecError) as info:
        _spec(start_with=[start])
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def _trials(n: int) -> list[dict]:
    """Trials of SPACE whose loss depends on lr under adam, and on momentum under sgd."""
    rng = random.Random(0)
    trials = []
    for i in range(n):
        sgd = i % 2 == 1
        lr = 10 ** rng.uniform(-3, -1) if sgd else 10 ** rng.uniform(-4, -2)
        momentum = rng.uniform(0.8, 0.99) if sgd else None
        loss = (momentum - 0.8) * 10 if sgd else -math.log10(lr)
        trials.append(
            {
                "trial_id": f"trial_{i:04d}",
                "status": "completed",
                CONFIG_PREFIX + "optimizer": "sgd" if sgd else "adam",
                CONFIG_PREFIX + "lr": lr,
                CONFIG_PREFIX + "momentum": momentum,
                CONFIG_PREFIX + "hidden": rng.choice([16, 32]),
                "best_val_loss": loss,
                "last_val_loss": loss,
            }
        )
    return trials


def test_analysis_reads_inactive_values_as_absent():
    spec = _spec()
    trials = _trials(40)
    found, fitted = importances(trials, spec)
    assert fitted == {"val_loss": 40, "val_loss where optimizer=adam": 20, "val_loss where optimizer=sgd": 20}
    assert set(found["val_loss"]) == {"optimizer", "lr", "hidden"}  # what every trial has (not momentum)
    assert next(iter(found["val_loss where optimizer=adam"])) == "lr", found
    assert next(iter(found["val_loss where optimizer=sgd"])) == "momentum", found
    series = isolation(trials, spec, "momentum")
    assert sum(len(line) for line in series.values()) > 0  # sgd trials only: no bucket of None
    assert all(b is not None for line in series.values() for b in line)
    for warning in _boundary_warnings(trials, spec):  # computed over the trials that have a value
        assert "None" not in warning
