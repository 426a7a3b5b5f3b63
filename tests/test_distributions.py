"""Distributions are objects: each validates itself, samples from a unit value, converts to Ray Tune and
HyperOpt (checked by sampling both), enumerates itself for grid search, and gives its analysis scale. The two
added by issue 12, quniform and lograndint, run end to end under quasirandom, hyperopt and grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import spec_dict
from contract import check_contract

from orchestrator.api import run
from orchestrator.errors import SpecError
from orchestrator.practice.analyze import analyze_run
from orchestrator.results import CONFIG_PREFIX, load_results
from orchestrator.search import DISTRIBUTIONS
from orchestrator.search.distributions import GRID_LIMIT, Choice, LogRandInt, QUniform
from orchestrator.spec import json_schema, parse_spec
from orchestrator.tuning.forms import hyperopt_space, tune_domain

EXAMPLES = {  # one of each, as a spec writes it
    "uniform": [0.1, 0.5],
    "loguniform": [1e-4, 1e-1],
    "quniform": [0.0, 0.5, 0.1],
    "randint": [1, 4],
    "lograndint": [2, 300],
    "choice": [16, "wide", 2.5, True],
}
BAD = {  # (arguments, words of the one-line error)
    "uniform": ([0.5, 0.1], "low < high"),
    "loguniform": ([0.0, 1.0], "0 < low < high"),
    "quniform": ([0.05, 0.5, 0.1], "multiples of q: 0.05"),
    "randint": ([3, 1], "low <= high"),
    "lograndint": ([0, 10], "1 <= low <= high"),
    "choice": ([1, 1], "lists a value twice"),
}


def _dist(name):
    return DISTRIBUTIONS[name].model_validate({name: EXAMPLES[name]})


def test_the_registry_is_every_distribution_once():
    assert list(DISTRIBUTIONS) == ["uniform", "loguniform", "quniform", "randint", "lograndint", "choice"]
    assert set(EXAMPLES) == set(DISTRIBUTIONS) == set(BAD)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_refuses_bad_arguments_in_one_line_naming_the_field(name):
    args, words = BAD[name]
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(search={"space": {"lr": {"loguniform": [1e-3, 1e-1]}, "hidden": {name: args}}}))
    message = str(info.value)
    assert "\n" not in message and f"search.space.hidden.{name}" in message and words in message, message


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_from_unit_covers_the_distribution_and_stays_in_it(name):
    dist = _dist(name)
    values = [dist.from_unit(float(u)) for u in np.linspace(0, 1, 2001, endpoint=False)]
    assert all(dist.contains(v) for v in values)
    finite = dist.finite_values()
    if finite is not None:  # every value is reached, ends included
        assert set(values) == set(finite)
    else:
        assert math.isclose(min(values), dist.args[0]) and max(values) < dist.args[1]
    assert {type(v) for v in values} <= ({dist.value_type} if name != "choice" else {int, str, float, bool})


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_ray_tune_and_hyperopt_sample_the_same_distribution(name):
    from hyperopt.pyll import stochastic

    dist = _dist(name)
    tune_values = tune_domain(dist).sample(size=400, random_state=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    expression = hyperopt_space(dist, name)
    hyperopt_values = [stochastic.sample(expression, rng=rng) for _ in range(400)]
    for values in (tune_values, hyperopt_values):
        canonical = [dist.canonical(v) for v in values]
        assert all(dist.contains(v) for v in canonical), (name, sorted(set(canonical))[:10])
    finite = dist.finite_values()
    if finite is not None and len(finite) <= 12:  # both reach every value
        assert {dist.canonical(v) for v in tune_values} == set(finite)
        assert {dist.canonical(v) for v in hyperopt_values} == set(finite)


def test_quniform_states_its_values_as_multiples_of_q():
    dist = QUniform(quniform=[0.0, 0.5, 0.1])
    assert dist.finite_values() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert dist.canonical(3 * 0.1) == 0.3 and 3 * 0.1 != 0.3  # Ray Tune and HyperOpt give 0.30000000000000004
    assert dist.from_unit(0.0) == 0.0 and dist.from_unit(0.999) == 0.5 and dist.from_unit(0.55) == 0.3
    assert dist.middle() == 0.3 and dist.value_type is float
    assert not dist.contains(0.25) and dist.contains(0.2)
    assert QUniform(quniform=[0.0, 1.0, 1e-6]).finite_values() is None  # 1,000,001 values: too many to list


def test_lograndint_is_inclusive_integer_and_log_spread():
    dist = LogRandInt(lograndint=[1, 1000])
    values = [dist.from_unit(float(u)) for u in np.linspace(0, 1, 10_000, endpoint=False)]
    assert min(values) == 1 and max(values) == 1000 and all(isinstance(v, int) for v in values)
    # log-uniform: as many values below ~32 (the geometric middle) as above it
    below = sum(v < math.sqrt(1000) for v in values) / len(values)
    assert 0.45 < below < 0.55, below
    assert dist.middle() == 32 and dist.log_scale and dist.unit(1) == 0.0 and dist.unit(1000) == 1.0
    assert math.isclose(dist.at_unit(0.5), math.sqrt(1000))
    assert LogRandInt(lograndint=[5, 5]).finite_values() == [5]


def test_analysis_scale_and_middle_of_each():
    middles = {name: _dist(name).middle() for name in EXAMPLES}
    assert middles == {
        "uniform": 0.3,
        "loguniform": math.sqrt(1e-5),
        "quniform": 0.3,
        "randint": 2,
        "lograndint": round(math.sqrt(600)),
        "choice": 2.5,
    }
    assert [name for name in EXAMPLES if _dist(name).log_scale] == ["loguniform", "lograndint"]
    assert [name for name in EXAMPLES if not _dist(name).ordered] == ["choice"]
    with pytest.raises(TypeError):
        Choice(choice=[1, 2]).unit(1)


def test_grid_takes_every_finite_distribution_and_refuses_the_rest():
    space = {
        "dropout": {"quniform": [0.0, 0.2, 0.1]},
        "hidden": {"lograndint": [16, 18]},
        "depth": {"randint": [1, 2]},
        "optimizer": {"choice": ["adam", "sgd"]},
    }
    spec = parse_spec(spec_dict(search={"algorithm": "grid", "num_samples": 2, "space": space}))
    assert spec.search.num_trials() == 3 * 3 * 2 * 2 * 2
    for bad, words in (
        ({"lr": {"uniform": [0.01, 0.1]}}, "space.lr is uniform [0.01, 0.1]"),
        ({"dropout": {"quniform": [0.0, 1.0, 1e-6]}}, "space.dropout is quniform"),
    ):
        with pytest.raises(SpecError, match="grid search needs every hyperparameter to be a choice") as info:
            parse_spec(spec_dict(search={"algorithm": "grid", "space": bad}))
        assert words in str(info.value) and f"at most {GRID_LIMIT} values" in str(info.value)


def test_every_distribution_describes_itself_in_the_schema():
    schema = json.loads(json_schema())
    described = {name: schema["$defs"][cls.__name__] for name, cls in DISTRIBUTIONS.items()}
    for name, definition in described.items():
        assert definition["description"] and definition["properties"][name]["description"], name
        assert definition["additionalProperties"] is False


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["quasirandom", "hyperopt", "grid"])
def test_a_job_searches_quniform_and_lograndint(algorithm, ray_cluster, tmp_path):
    """A short job over the two new distributions under each algorithm that treats them differently: every
    trial's values are in range and stated as the distribution states them, and analyze bins them."""
    grid = algorithm == "grid"
    space = {"dropout": {"quniform": [0.0, 0.4, 0.1]}, "hidden": {"lograndint": [8, 9] if grid else [8, 64]}}
    spec = parse_spec(
        spec_dict(
            storage=str(tmp_path),
            train={"max_epochs": 1 if grid else 2},
            search={
                "algorithm": algorithm,
                "num_samples": 1 if grid else 6,
                "max_concurrent": 2,
                "space": space,
                "roles": {"dropout": "scientific"},
            },
        )
    )
    summary = run(spec, progress=lambda line: None)
    rows, trials = check_contract(summary, spec)
    dropouts = rows[CONFIG_PREFIX + "dropout"].to_pylist()
    assert all(v in (0.0, 0.1, 0.2, 0.3, 0.4) for v in dropouts), dropouts  # never 0.30000000000000004
    assert str(rows.schema.field(CONFIG_PREFIX + "hidden").type) == "int64"
    if grid:
        configs = {(t["config/dropout"], t["config/hidden"]) for t in trials.to_pylist()}
        assert trials.num_rows == 10 and configs == {
            (d, h) for d in (0.0, 0.1, 0.2, 0.3, 0.4) for h in (8, 9)
        }
    else:
        assert (
            trials.num_rows == 6
            and len(set(load_results(summary.results_uri)["config/hidden"].to_pylist())) > 1
        )
    report = analyze_run(summary.results_uri, tmp_path / "analysis")
    assert any(line.startswith("isolation dropout (scientific)") for line in report.lines)
    assert (tmp_path / "analysis" / "isolation_hidden.png").stat().st_size > 5000
