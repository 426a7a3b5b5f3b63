"""The built-in `synthetic` workload: known optima, no training, a learning curve for schedulers."""

from __future__ import annotations

import math

import pytest
from conftest import spec_dict

from orchestrator.errors import RunError
from orchestrator.practice.sanity import sanity_checks
from orchestrator.spec import parse_spec
from orchestrator.workloads import resolve_workload
from orchestrator.workloads.synthetic import OPTIMA, objective

BRANIN_MINIMA = [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)]
HARTMANN6_ARGMIN = [0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]


def _config(function, xs):
    return {
        "function": function,
        **{f"x{i}": 0.5 for i in range(1, 7)},
        **{f"x{i + 1}": x for i, x in enumerate(xs)},
    }


def test_known_optima_are_where_the_literature_puts_them():
    for x1, x2 in BRANIN_MINIMA:
        config = _config("branin", [(x1 + 5) / 15, x2 / 15])
        assert objective(config, 1)["train_loss"] == pytest.approx(OPTIMA["branin"], abs=1e-5)
    assert objective(_config("hartmann6", HARTMANN6_ARGMIN), 1)["train_loss"] == pytest.approx(
        OPTIMA["hartmann6"], abs=1e-4
    )


def test_val_loss_is_a_learning_curve_converging_to_the_function():
    config = _config("hartmann6", [0.9, 0.1, 0.9, 0.1, 0.9, 0.1])
    curve = [objective(config, e)["val_loss"] for e in range(1, 30)]
    f = objective(config, 1)["train_loss"]
    assert all(a > b > f for a, b in zip(curve, curve[1:], strict=False))
    assert curve[-1] - f < 0.2


def test_synthetic_specs_validate_and_sanity_refuses_them():
    spec = parse_spec(
        spec_dict(
            workload="synthetic",
            search={
                "metric": "train_loss",
                "space": {"x1": {"uniform": [0, 1]}, "x2": {"uniform": [0, 1]}},
                "fixed": {"function": "branin"},
            },
        )
    )
    assert not resolve_workload(spec.workload).uses_standard_loop
    with pytest.raises(
        RunError,
        match="synthetic: sanity needs build_model and load_data .*; it gives no build_model or load_data",
    ):
        sanity_checks(spec)


def test_zdt1_is_two_objectives_whose_front_is_known():
    # on the front (x2..x6 = 0): f2 = 1 - sqrt(f1); val_loss converges to f2 as epochs grow
    config = _config("zdt1", [0.25, 0, 0, 0, 0, 0])
    assert objective(config, 1) == pytest.approx({"train_loss": 0.25, "val_loss": 2 * 0.5})
    assert objective(config, 1000)["val_loss"] == pytest.approx(0.5, rel=1e-2)
    off = objective(_config("zdt1", [0.25, 1, 1, 1, 1, 1]), 1000)  # g = 10: far from the front
    assert off["val_loss"] > 5
