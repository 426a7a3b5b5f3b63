"""hpo run | resume: a job on Ray, and its summary."""

from __future__ import annotations

import json
import sys

from orchestrator import api
from orchestrator.cli.common import EXIT_FAILED, EXIT_UNSYNCED, CliError, progress_printer, read_spec
from orchestrator.cli.output import print_ensemble
from orchestrator.execution.resume import AlreadyFinished
from orchestrator.practice.ensemble import build_ensemble
from orchestrator.results import format_config, summarize
from orchestrator.results.ops import stored_spec
from orchestrator.spec import EnsembleSpec
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
        progress=progress_printer(args),
        run_id=args.run_id,
        on_start=lambda uri: print(f"results_uri: {uri}", flush=True),
    )
    return _finish(summary, spec, args)


def resume(args) -> int:
    try:
        summary = api.resume(
            args.uri,
            spec_path=args.spec,
            address=args.address,
            num_cpus=args.num_cpus,
            progress=progress_printer(args),
            on_start=lambda uri: print(f"results_uri: {uri}", flush=True),
        )
    except AlreadyFinished as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        print(f"results_uri: {args.uri}")
        summary = summarize(args.uri)
        if args.output == "json":
            print(json.dumps(summary.to_json(), default=str))
        else:
            _print_summary(summary)
        return 0
    return _finish(summary, stored_spec(args.uri), args)


def _finish(summary, spec, args) -> int:
    if args.output == "json":
        print(json.dumps(summary.to_json(), default=str))
    else:
        _print_summary(summary)
    if summary.upload_pending:
        print(
            f"hpo: storage unreachable: {summary.upload_pending} upload(s) still wait in {summary.spool_dir}; "
            f"run `hpo results sync {summary.results_uri}` when it is back",
            file=sys.stderr,
        )
        return EXIT_UNSYNCED
    failed = summary.statuses.get("error", 0)
    if failed and spec.train.fail_fast:
        print(
            f"hpo: a trial failed and train.fail_fast is set: the job stopped ({summary.results_uri}/"
            "trials.parquet holds the error)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if failed == summary.num_trials:
        print(
            f"hpo: every trial failed ({summary.results_uri}/trials.parquet holds each error)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _run_ensemble(spec: EnsembleSpec, args) -> int:
    print(f"results_uri: {spec.run}", flush=True)
    result = build_ensemble(
        spec.run,
        top_k=spec.top_k,
        method=spec.method,
        address=args.address,
        options=spec.storage_options.s3(),
        progress=progress_printer(args),
    )
    print_ensemble(result, args.output)
    return 0


def _print_summary(summary) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    print(f"finished {summary.num_trials} trials ({counts}) in {summary.wall_time_s:.1f}s")
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
    print(f"results: {summary.results_uri}  (hpo results show {summary.results_uri})")
