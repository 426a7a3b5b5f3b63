"""hpo validate | schema | run."""

from __future__ import annotations

import argparse
import json
import sys

from orchestrator.cli._common import (
    EXIT_FAILED,
    EXIT_UNSYNCED,
    CliError,
    add_ray_options,
    progress_printer,
    read_spec,
)
from orchestrator.spec import EnsembleSpec, json_schema


def register(commands) -> None:
    p = commands.add_parser("validate", help="check a job spec; exit 2 with the reason if it is bad")
    p.add_argument("spec", help="path to a YAML job spec")
    p.set_defaults(handler=validate)

    p = commands.add_parser("schema", help="print the job spec's JSON Schema")
    p.set_defaults(handler=schema)

    p = commands.add_parser("run", help="run a job on an embedded Ray (or --address) and write its results")
    p.add_argument("spec", help="path to a YAML job spec")
    p.add_argument("--storage", help="override the spec's storage (a local folder)")
    add_ray_options(p)
    p.add_argument("--run-id", help=argparse.SUPPRESS)  # chosen by `hpo submit`, so it knows the results URI
    p.set_defaults(handler=run)

    p = commands.add_parser(
        "resume", help="continue a run whose driver died, from its storage (local or s3://)"
    )
    p.add_argument("uri", help="the run's results_uri (printed by hpo run)")
    p.add_argument("--spec", help="refuse to resume unless this spec is the run's (the difference is named)")
    add_ray_options(p)
    p.set_defaults(handler=resume)


def validate(args) -> int:
    spec = read_spec(args.spec)
    if isinstance(spec, EnsembleSpec):
        print(f"ok: {spec.name}: ensemble ({spec.method}) of the best {spec.top_k} trials of {spec.run}")
        return 0
    space = ", ".join(f"{n}~{spec.search.distribution(n)[0]}" for n in spec.search.space)
    print(
        f"ok: {spec.name}: {spec.search.algorithm} search over {space}; {spec.scheduler.type} scheduler; "
        f"workload {spec.workload}"
    )
    return 0


def schema(args) -> int:
    print(json_schema())
    return 0


def run(args) -> int:
    from orchestrator.runner import run as run_job
    from orchestrator.storage import check_storage_uri

    spec = read_spec(args.spec)
    if isinstance(spec, EnsembleSpec):
        return _run_ensemble(spec, args)
    if args.storage:
        try:
            check_storage_uri(args.storage)
        except ValueError as exc:
            raise CliError(f"--storage: {exc}") from None

    summary = run_job(
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
    from orchestrator.resume import AlreadyFinished
    from orchestrator.resume import resume as resume_run
    from orchestrator.summary import summarize

    try:
        summary = resume_run(
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
    from orchestrator.results.ops import stored_spec

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
    from orchestrator.cli._practice import print_ensemble
    from orchestrator.ensemble import build_ensemble

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
        from orchestrator.summary import format_config

        config = format_config(best["config"])
        print(
            f"best: {best['trial_id']} epoch {best['iteration']}: {summary.metric}={best['metric']:.4f} "
            f"({summary.mode})"
        )
        print(f"      {config}")
    print(f"results: {summary.results_uri}  (hpo results show {summary.results_uri})")
