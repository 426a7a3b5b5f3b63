"""hpo validate | schema: the spec alone. Light: nothing here imports Ray or pyarrow, nor torch unless a
user's workload builds its model with it (validate builds it once, so a bug there stops before a search)."""

from __future__ import annotations

from orchestrator.cli.common import CliError, read_spec
from orchestrator.spec import EnsembleSpec, SpecError, check_model_builds, json_schema
from orchestrator.workloads import resolve_workload


def validate(args) -> int:
    spec = read_spec(args.spec)
    if isinstance(spec, EnsembleSpec):
        print(f"ok: {spec.name}: ensemble ({spec.method}) of the best {spec.top_k} trials of {spec.run}")
        return 0
    try:
        check_model_builds(spec, resolve_workload(spec.workload))
    except SpecError as error:
        raise CliError(f"Invalid job spec {args.spec}: {error}") from None
    space = ", ".join(
        f"{leaf.key}~{leaf.dist.name}" + ("(branches)" if leaf.branches else "")
        for leaf in spec.search.hyperparameters.leaves
    )
    print(
        f"ok: {spec.name}: {spec.search.algorithm} search over {space}; {spec.scheduler.type} scheduler; "
        f"workload {spec.workload}"
    )
    return 0


def schema(args) -> int:
    print(json_schema())
    return 0
