"""hpo validate | schema: the spec alone. Light: nothing here imports Ray, torch or pyarrow."""

from __future__ import annotations

from orchestrator.cli.common import read_spec
from orchestrator.spec import EnsembleSpec, json_schema


def validate(args) -> int:
    spec = read_spec(args.spec)
    if isinstance(spec, EnsembleSpec):
        print(f"ok: {spec.name}: ensemble ({spec.method}) of the best {spec.top_k} trials of {spec.run}")
        return 0
    space = ", ".join(f"{name}~{dist.name}" for name, dist in spec.search.space.items())
    print(
        f"ok: {spec.name}: {spec.search.algorithm} search over {space}; {spec.scheduler.type} scheduler; "
        f"workload {spec.workload}"
    )
    return 0


def schema(args) -> int:
    print(json_schema())
    return 0
