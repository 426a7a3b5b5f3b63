"""The public API, composed from the stages (what `import orchestrator` exposes; see __init__.py).

Only composition lives here: `run` is the runner with the sanity gate of `sanity: true` handed in, so neither
execution/ nor practice/ imports the other's way up.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.execution import runner
from orchestrator.execution.resume import resume
from orchestrator.launch.launcher import IN_PROCESS_TRIAL_MODULE
from orchestrator.ray_support import up as warm_up
from orchestrator.ray_support.warm import WarmSession
from orchestrator.results.summary import RunSummary
from orchestrator.spec import JobSpec

__all__ = ["run", "resume", "plan", "session", "up", "down"]

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


def session(num_cpus: float | None = None, *, ddp: bool = False) -> WarmSession:
    """`with orchestrator.session():` keeps one embedded Ray warm across the `run()` and `resume()` calls inside
    it (a notebook's habit): Ray starts once, and each run's trial processes are started, torch imported, before
    it asks for them. `num_cpus`: the Ray's logical CPUs (default: this machine's cores, plus one). `ddp=True`
    for jobs with train.workers > 1 (Ray Train needs Ray's dashboard, whose start slows the first run). On exit
    Ray stops and the process is as it was."""
    return WarmSession(IN_PROCESS_TRIAL_MODULE, num_cpus, dashboard=ddp)


def up(num_cpus: float | None = None) -> warm_up.UpSession:
    """`hpo up`: start a warm session in a process of its own, which runs and resumes started from this
    directory (with no address) join until `down()`. RunError if one is up already."""
    return warm_up.start(IN_PROCESS_TRIAL_MODULE, num_cpus)


def down() -> warm_up.UpSession | None:
    """`hpo down`: stop the warm session of `up()` and everything it started; returns it (None if none was up)."""
    return warm_up.stop()
