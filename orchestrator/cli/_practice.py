"""hpo ensemble | sanity | analyze: what careful practitioners do around a search."""

from __future__ import annotations

import json
import sys

from orchestrator.cli._common import EXIT_FAILED, CliError, add_output, print_table, read_tune_spec


def register(commands) -> None:
    p = commands.add_parser(
        "ensemble", help="ensemble the best trials of a finished run; writes ensemble.parquet"
    )
    p.add_argument("uri", help="a finished run's results_uri (printed by hpo run)")
    p.add_argument(
        "--top-k", type=int, default=3, help="members (topk) or selection steps (greedy); default 3"
    )
    p.add_argument(
        "--method",
        choices=("topk", "greedy"),
        default="topk",
        help="topk: average the K best trials; greedy: Caruana forward selection on validation loss",
    )
    add_output(p)
    p.set_defaults(handler=ensemble)

    p = commands.add_parser(
        "sanity", help="check a workload before searching (loss at init, overfit one batch, ...)"
    )
    p.add_argument("spec", help="path to a YAML job spec")
    p.add_argument("--storage", help="override the spec's storage (where sanity.parquet goes)")
    add_output(p)
    p.set_defaults(handler=sanity)

    p = commands.add_parser(
        "reproduce", help="rerun one trial from its recorded config and seed; compare bit for bit"
    )
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument("trial_id", help="e.g. trial_0003")
    add_output(p)
    p.set_defaults(handler=reproduce)

    p = commands.add_parser("analyze", help="learning curves, isolation plots and warnings for a run")
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument("--out", required=True, help="folder for the PNG plots and report.txt")
    p.set_defaults(handler=analyze)


def ensemble(args) -> int:
    from orchestrator.ensemble import build_ensemble

    if args.top_k < 1:
        raise CliError(f"--top-k {args.top_k}: use 1 or more")
    result = build_ensemble(
        args.uri,
        top_k=args.top_k,
        method=args.method,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print_ensemble(result, args.output)
    return 0


def print_ensemble(result, output: str) -> None:
    if output == "json":
        print(json.dumps(result.to_json()))
        return
    rows = [
        {"": "ensemble", **result.ensemble},
        {"": f"best single ({result.best_single['trial_id']})", **result.best_single},
    ]
    rows += [{"": f"member {m['trial_id']} x{m['weight']:.2f}", **m} for m in result.members]
    print_table(["", *result.ensemble], rows)
    print(f"wrote {result.results_uri}/ensemble.parquet")


def sanity(args) -> int:
    from orchestrator.sanity import run_sanity

    spec = read_tune_spec(args.spec, "sanity")
    report = run_sanity(
        spec, storage=args.storage, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    if args.output == "json":
        print(json.dumps(report.to_json()))
    else:
        print_table(
            ["name", "passed", "measured", "expected", "detail"],
            [{**c.__dict__, "passed": "PASS" if c.passed else "FAIL"} for c in report.checks],
        )
        print(f"wrote {report.results_uri}/sanity.parquet")
    return 0 if report.passed else EXIT_FAILED


def analyze(args) -> int:
    from orchestrator.analyze import analyze_run

    report = analyze_run(args.uri, args.out)
    for line in report.lines:
        print(line)
    print(f"wrote {len(report.plots)} plot(s) and report.txt to {args.out}")
    return 0


def reproduce(args) -> int:
    from orchestrator.reproduce import reproduce as rerun

    result = rerun(args.uri, args.trial_id)
    print(json.dumps(result.to_json()) if args.output == "json" else result.describe())
    return 0 if result.identical else EXIT_FAILED
