"""hpo ensemble | sanity | analyze | reproduce: what careful practitioners do around a search."""

from __future__ import annotations

import json

from orchestrator.cli.common import EXIT_FAILED, CliError, read_tune_spec
from orchestrator.cli.output import print_ensemble, print_table
from orchestrator.execution.reproduce import reproduce_trials
from orchestrator.execution.runner import print_progress
from orchestrator.practice.analyze import analyze_run
from orchestrator.practice.ensemble import build_ensemble
from orchestrator.practice.sanity import run_sanity
from orchestrator.results.layout import SANITY_FILE


def ensemble(args) -> int:
    if args.top_k < 1:
        raise CliError(f"--top-k {args.top_k}: use 1 or more")
    result = build_ensemble(
        args.uri,
        top_k=args.top_k,
        method=args.method,
        progress=print_progress,
        by=args.metric,
    )
    print_ensemble(result, args.output)
    return 0


def sanity(args) -> int:
    spec = read_tune_spec(args.spec, "sanity")
    report = run_sanity(spec, storage=args.storage, progress=print_progress)
    if args.output == "json":
        print(json.dumps(report.to_json()))
    else:
        print_table(
            ["name", "passed", "measured", "expected", "detail"],
            [{**c.__dict__, "passed": c.status.upper()} for c in report.checks],
        )
        print(f"wrote {report.results_uri}/{SANITY_FILE}")
    return 0 if report.passed else EXIT_FAILED


def analyze(args) -> int:
    report = analyze_run(args.uri, args.out)
    for line in report.lines:
        print(line)
    print(f"wrote {len(report.plots)} plot(s) and report.txt to {args.out}")
    return 0


def reproduce(args) -> int:
    results = reproduce_trials(args.uri, args.trial_ids)
    for result in results:  # one line (a JSON object with --output json) per trial, in the order asked
        print(json.dumps(result.to_json()) if args.output == "json" else result.describe())
    return 0 if all(r.identical for r in results) else EXIT_FAILED
