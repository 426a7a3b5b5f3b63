"""Every list of names lives once: algorithms, schedulers (and their defaults), distributions, storage schemes,
built-in workloads. Validation, `hpo schema`, "did you mean" and the README's table all come from the registry;
every registered name has what the rest of the system needs of it."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, spec_dict

from orchestrator.cli.parser import build_parser
from orchestrator.errors import SpecError
from orchestrator.practice.ensemble import SELECTIONS
from orchestrator.search import ALGORITHMS, DISTRIBUTIONS, SCHEDULERS
from orchestrator.spec import ENSEMBLE_METHODS, json_schema, parse_spec
from orchestrator.spec.reference import current_block, rendered_block
from orchestrator.storage import SCHEMES, check_storage_uri
from orchestrator.tuning.tune_search import BUILDERS
from orchestrator.workloads import BUILTIN_WORKLOADS, resolve_workload


def test_the_readme_table_is_the_registries():
    """Regenerate with `python -m orchestrator.spec.reference README.md`."""
    readme = (ROOT / "README.md").read_text()
    assert current_block(readme) == rendered_block()
    block = rendered_block()
    for names in (ALGORITHMS, SCHEDULERS, BUILTIN_WORKLOADS):
        assert all(f"| `{name}` |" in block for name in names)
    assert all(f"| `{{{name}: " in block for name in DISTRIBUTIONS)
    assert all(f"| `{scheme}://` |" in block for scheme in SCHEMES)


def test_the_schema_enumerates_the_registries():
    defs = json.loads(json_schema())["$defs"]
    algorithm = defs["Search"]["properties"]["algorithm"]
    assert algorithm["enum"] == list(ALGORITHMS)
    assert all(f"{name}: {a.help}" in algorithm["description"] for name, a in ALGORITHMS.items())
    scheduler = defs["Scheduler"]["properties"]
    assert scheduler["type"]["enum"] == list(SCHEDULERS)
    for kind in SCHEDULERS.values():
        for name, option in kind.options.items():
            assert (
                scheduler[name]["description"] == f"{kind.name}: {option.help} (default {option.default:g})"
            )
    assert set(scheduler) == {"type"} | {name for kind in SCHEDULERS.values() for name in kind.options}
    space = defs["Search"]["properties"]["space"]["additionalProperties"]["oneOf"]
    assert [ref["$ref"].rsplit("/", 1)[-1] for ref in space] == [
        *(c.__name__ for c in DISTRIBUTIONS.values()),
        "Branches",  # a choice of branches (search/space.py)
    ]


@pytest.mark.parametrize(
    "field, value, hint",
    [
        ("algorithm", "quasirandm", "did you mean 'quasirandom'?"),
        ("algorithm", "hyperpot", "did you mean 'hyperopt'?"),
    ],
)
def test_did_you_mean_comes_from_the_registry(field, value, hint):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(search={field: value}))
    assert hint in str(info.value) and ", ".join(ALGORITHMS) in str(info.value)


def test_did_you_mean_for_every_other_registry():
    cases = [
        (spec_dict(scheduler={"type": "ahsa"}), "did you mean 'asha'?", SCHEDULERS),
        (
            spec_dict(search={"space": {"lr": {"logunifrom": [1, 10]}}}),
            "did you mean 'loguniform'?",
            DISTRIBUTIONS,
        ),
        (spec_dict(workload="digits-mpl"), "did you mean 'digits-mlp'?", BUILTIN_WORKLOADS),
    ]
    for data, hint, registry in cases:
        with pytest.raises(SpecError) as info:
            parse_spec(data)
        assert hint in str(info.value) and ", ".join(registry) in str(info.value), str(info.value)
    with pytest.raises(ValueError, match=r"did you mean 's3://'\? use a local path, file:// or s3://"):
        check_storage_uri("s4://bucket/x")


def test_every_algorithm_has_a_tune_builder_and_every_method_a_selection():
    assert set(BUILDERS) == {type(algorithm) for algorithm in ALGORITHMS.values()}


def test_every_distribution_and_scheduler_has_its_tune_forms():
    """search/ says what to try; tuning/forms.py's tables say it to Tune, HyperOpt and Optuna: one entry per
    class, and each Optuna form takes the distribution's own middle value."""
    from orchestrator.search import DISTRIBUTIONS, SCHEDULERS
    from orchestrator.tuning.forms import (
        HYPEROPT_SPACES,
        OPTUNA_DISTRIBUTIONS,
        TUNE_DOMAINS,
        TUNE_SCHEDULERS,
        optuna_distribution,
    )

    assert (
        set(TUNE_DOMAINS) == set(HYPEROPT_SPACES) == set(OPTUNA_DISTRIBUTIONS) == set(DISTRIBUTIONS.values())
    )
    from optuna.trial import create_trial
    from test_distributions import EXAMPLES

    for name, args in EXAMPLES.items():
        dist = DISTRIBUTIONS[name].model_validate({name: args})
        for value in (dist.middle(), *dist.extremes()):  # Optuna refuses a value outside the distribution
            create_trial(params={"x": value}, distributions={"x": optuna_distribution(dist)}, value=0.0)
    assert set(TUNE_SCHEDULERS) == {type(s) for s in SCHEDULERS.values()}
    assert list(SELECTIONS) == list(ENSEMBLE_METHODS)


def test_scheduler_defaults_and_options_come_from_the_registry():
    workload = resolve_workload("digits-mlp")
    asha = parse_spec(spec_dict(scheduler={"type": "asha"}))
    assert asha.resolved(workload).scheduler.model_dump() == {
        "type": "asha",
        **{name: option.default for name, option in SCHEDULERS["asha"].options.items()},
    }
    with pytest.raises(SpecError, match="scheduler: grace_period applies only to type: asha"):
        parse_spec(spec_dict(scheduler={"type": "fifo", "grace_period": 2}))


def test_every_builtin_workload_resolves_and_describes_itself():
    for name, factory in BUILTIN_WORKLOADS.items():
        assert resolve_workload(name).name == name and factory.__doc__


def test_cli_choices_come_from_the_registries():
    parser = build_parser()
    args = parser.parse_args(["ensemble", "/tmp/x", "--method", "greedy"])
    assert args.method == "greedy" and args.handler == "practice_cmds:ensemble"
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["ensemble"]._actions}
    assert tuple(actions["method"].choices) == tuple(ENSEMBLE_METHODS)
