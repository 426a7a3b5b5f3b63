"""hpo run | resume: a job on Ray, and its summary; hpo up | down: the warm local Ray they join."""

from __future__ import annotations

import json
import sys

from orchestrator import api
from orchestrator.cli.common import EXIT_FAILED, EXIT_UNSYNCED, CliError, read_spec
from orchestrator.cli.output import gpu_idle_note, print_ensemble
from orchestrator.execution.resume import AlreadyFinished
from orchestrator.execution.runner import print_progress
from orchestrator.results import format_config, summarize
from orchestrator.results.layout import TRIALS_FILE
from orchestrator.results.ops import stored_spec
from orchestrator.spec import EnsembleSpec
from orchestrator.stopping import DISK_FULL, FAILED, INTERRUPTED, STOPPED, exit_code_for
from orchestrator.storage import check_storage_uri


def run(args) -> int:
    spec = read_spec(args.spec)
    if isinstance(spec, EnsembleSpec):
        return _run_ensemble(spec, args)
    if args.storage:
        try:
            check_storage_uri(args.storage)
        except ValueError as exc:
            raise CliError(f"--storage: {exc}") from None

    summary = api.run(
        spec,
        storage=args.storage,
        address=args.address,
        num_cpus=args.num_cpus,
        progress=_progress(args),
        run_id=args.run_id,
        on_start=lambda uri: print(f"results_uri: {uri}", flush=True),
    )
    return _finish(summary, spec, args)


def up(args) -> int:
    session = api.up(num_cpus=args.num_cpus)
    print(
        f"hpo: warm session up (Ray at {session.address}, {session.cpus:g} CPUs, serving {session.cwd}); "
        "hpo run and hpo resume started here join it; `hpo down` stops it",
        file=sys.stderr,
    )
    return 0


def down(args) -> int:
    session = api.down()
    print(
        f"hpo: warm session (pid {session.pid}) stopped, its Ray and processes ended"
        if session
        else "hpo: no warm session was up",
        file=sys.stderr,
    )
    return 0


def resume(args) -> int:
    try:
        summary = api.resume(
            args.uri,
            spec_path=args.spec,
            address=args.address,
            num_cpus=args.num_cpus,
            progress=_progress(args),
            on_start=lambda uri: print(f"results_uri: {uri}", flush=True),
            add_trials=args.add_trials,
        )
    except AlreadyFinished as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        print(f"results_uri: {args.uri}")
        _show(summarize(args.uri), args)
        return 0
    return _finish(summary, stored_spec(args.uri), args)


def _show(summary, args) -> None:
    if args.output == "json":
        print(json.dumps(summary.to_json(), default=str))
    else:
        _print_summary(summary)


def _finish(summary, spec, args) -> int:
    _show(summary, args)
    if summary.status in (INTERRUPTED, STOPPED):
        print(
            f"hpo: the run was {summary.status}; nothing is lost: continue it with `hpo resume "
            f"{summary.results_uri}`",
            file=sys.stderr,
        )
    elif summary.status == DISK_FULL:
        print(
            f"hpo: the job stopped: {summary.reason}; nothing written is lost: once there is space, "
            f"`hpo resume {summary.results_uri}` continues it",
            file=sys.stderr,
        )
    elif summary.status == FAILED and summary.reason:
        print(
            f"hpo: the job stopped: {summary.reason}; once the code is fixed, `hpo resume "
            f"{summary.results_uri}` continues it",
            file=sys.stderr,
        )
    if summary.upload_pending:
        print(
            f"hpo: storage unreachable: {summary.upload_pending} upload(s) still wait in {summary.spool_dir}; "
            f"run `hpo results sync {summary.results_uri}` when it is back",
            file=sys.stderr,
        )
        return EXIT_UNSYNCED
    if summary.status in (INTERRUPTED, STOPPED):
        return exit_code_for(summary.stop_signal)
    if summary.status == DISK_FULL:
        return EXIT_UNSYNCED
    if summary.status == FAILED and summary.reason:
        return EXIT_FAILED
    failed = summary.statuses.get("error", 0)
    if failed and spec.train.fail_fast:
        print(
            f"hpo: a trial failed and train.fail_fast is set: the job stopped ({summary.results_uri}/"
            f"{TRIALS_FILE} holds the error)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if failed == summary.num_trials:
        print(
            f"hpo: every trial failed ({summary.results_uri}/{TRIALS_FILE} holds each error)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _run_ensemble(spec: EnsembleSpec, args) -> int:
    # late: the ensemble predicts with torch; `hpo run` of a tuning spec never loads it
    from orchestrator.practice.ensemble import build_ensemble

    print(f"results_uri: {spec.run}", flush=True)
    result = build_ensemble(
        spec.run,
        top_k=spec.top_k,
        method=spec.method,
        address=args.address,
        options=spec.storage_options.s3(),
        progress=_progress(args),
        by=spec.metric,
    )
    print_ensemble(result, args.output)
    return 0


def _print_summary(summary) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    if summary.status in ("finished", "budget_exhausted"):
        print(f"finished {summary.num_trials} trials ({counts}) in {summary.wall_time_s:.1f}s")
    else:  # interrupted, stopped, failed: said first, so the line cannot read as a finished run
        print(f"{summary.status} after {summary.wall_time_s:.1f}s: {summary.num_trials} trials ({counts})")
    best = summary.best
    if not best:
        print("best: none (no trial reported a metric)")
    else:
        config = format_config(best["config"])
        print(
            f"best: {best['trial_id']} epoch {best['iteration']}: {summary.metric}={best['metric']:.4f} "
            f"({summary.mode})"
        )
        print(f"      {config}")
    if summary.front is not None:
        print(f"Pareto front: {len(summary.front)} trial(s)")
        for point in summary.front:
            values = " ".join(f"{m}={v:.4g}" for m, v in point["values"].items())
            print(f"  {point['trial_id']}: {values}  ({format_config(point['config'])})")
    ledger = summary.ledger or {}
    if ledger:
        cost = f", cost {ledger['cost']:.4g}" if ledger.get("cost") is not None else ""
        print(
            f"spent: {ledger['cpu_hours']:.4g} CPU-hours, {ledger['gpu_hours']:.4g} GPU-hours"
            f"{gpu_idle_note(ledger)}{cost}"
            + (f"  (budget exhausted: {summary.budget_exhausted})" if summary.budget_exhausted else "")
        )
    print(f"results: {summary.results_uri}  (hpo results show {summary.results_uri})")


def _progress(args):
    """Progress lines to stderr, unless --quiet."""
    return (lambda line: None) if args.quiet else print_progress
