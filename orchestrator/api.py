"""The public API, composed from the stages (what `import orchestrator` exposes; see __init__.py).

Only composition lives here: `run` is the runner with the sanity gate of `sanity: true` handed in, so neither
execution/ nor practice/ imports the other's way up.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.execution import runner
from orchestrator.execution.resume import resume
from orchestrator.results.summary import RunSummary
from orchestrator.spec import JobSpec

__all__ = ["run", "resume", "plan"]

plan = runner.plan


def _sanity_gate(spec, store, results_uri, progress) -> None:
    # late: the checks train in this process (torch); only `sanity: true` jobs load them
    from orchestrator.practice.sanity import sanity_gate

    sanity_gate(spec, store, results_uri, progress)


def run(
    spec: JobSpec,
    *,
    storage: str | None = None,
    address: str | None = None,
    num_cpus: float | None = None,
    progress: Callable[[str], None] = runner.print_progress,
    on_start: Callable[[str], None] | None = None,
    run_id: str | None = None,
) -> RunSummary:
    """Run the job described by `spec` (checks first, with `sanity: true`) and return its summary.

    `storage` overrides the spec's; `address` joins a Ray cluster instead of starting an embedded Ray;
    `on_start(results_uri)` runs before the first trial; `progress` gets one line per event worth seeing."""
    return runner.run(
        spec,
        storage=storage,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        on_start=on_start,
        run_id=run_id,
        before_search=_sanity_gate if spec.sanity else None,
    )
