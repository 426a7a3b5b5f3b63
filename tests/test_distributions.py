"""Distributions are objects: each validates itself, samples from a unit value, converts to Ray Tune and
HyperOpt (checked by sampling both), enumerates itself for grid search, and gives its analysis scale."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import spec_dict

from orchestrator.errors import SpecError
from orchestrator.search import DISTRIBUTIONS
from orchestrator.search.distributions import Choice
from orchestrator.spec import json_schema, parse_spec

EXAMPLES = {  # one of each, as a spec writes it
    "uniform": [0.1, 0.5],
    "loguniform": [1e-4, 1e-1],
    "randint": [1, 4],
    "choice": [16, "wide", 2.5, True],
}
BAD = {  # (arguments, words of the one-line error)
    "uniform": ([0.5, 0.1], "low < high"),
    "loguniform": ([0.0, 1.0], "0 < low < high"),
    "randint": ([3, 1], "low <= high"),
    "choice": ([1, 1], "lists a value twice"),
}


def _dist(name):
    return DISTRIBUTIONS[name].model_validate({name: EXAMPLES[name]})


def test_the_registry_is_every_distribution_once():
    assert list(DISTRIBUTIONS) == ["uniform", "loguniform", "randint", "choice"]
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
    tune_values = dist.to_tune().sample(size=400, random_state=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    expression = dist.to_hyperopt(name)
    hyperopt_values = [stochastic.sample(expression, rng=rng) for _ in range(400)]
    for values in (tune_values, hyperopt_values):
        canonical = [dist.canonical(v) for v in values]
        assert all(dist.contains(v) for v in canonical), (name, sorted(set(canonical))[:10])
    finite = dist.finite_values()
    if finite is not None and len(finite) <= 12:  # both reach every value
        assert {dist.canonical(v) for v in tune_values} == set(finite)
        assert {dist.canonical(v) for v in hyperopt_values} == set(finite)


def test_analysis_scale_and_middle_of_each():
    middles = {name: _dist(name).middle() for name in EXAMPLES}
    assert middles == {"uniform": 0.3, "loguniform": math.sqrt(1e-5), "randint": 2, "choice": 2.5}
    assert [name for name in EXAMPLES if _dist(name).log_scale] == ["loguniform"]
    assert [name for name in EXAMPLES if not _dist(name).ordered] == ["choice"]
    with pytest.raises(TypeError):
        Choice(choice=[1, 2]).unit(1)


def test_every_distribution_describes_itself_in_the_schema():
    schema = json.loads(json_schema())
    described = {name: schema["$defs"][cls.__name__] for name, cls in DISTRIBUTIONS.items()}
    for name, definition in described.items():
        assert definition["description"] and definition["properties"][name]["description"], name
        assert definition["additionalProperties"] is False
