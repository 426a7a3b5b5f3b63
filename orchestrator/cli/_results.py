"""hpo results show | pull | ls | sync."""

from __future__ import annotations

from orchestrator.cli._common import EXIT_UNSYNCED, print_table
from orchestrator.results import CONFIG_PREFIX, load_trials


def register(commands) -> None:
    group = commands.add_parser("results", help="read, copy and list runs' results (local or s3://)")
    sub = group.add_subparsers(dest="results_command", metavar="SUBCOMMAND", parser_class=type(group))

    p = sub.add_parser("show", help="print the top trials of a run")
    p.add_argument("uri", help="a run's results_uri (printed by hpo run)")
    p.add_argument("--top", type=int, default=10, help="how many trials (default 10)")
    _endpoint(p)
    p.set_defaults(handler=show)

    p = sub.add_parser(
        "pull", help="copy a run's tables to a local folder (a consistent snapshot, even mid-run)"
    )
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument("--to", required=True, help="local folder to copy into")
    p.add_argument("--checkpoints", action="store_true", help="also copy each trial's best checkpoint")
    _endpoint(p)
    p.set_defaults(handler=pull)

    p = sub.add_parser("ls", help="list the jobs and runs under a storage root, with status and size")
    p.add_argument("storage", help="a storage root, e.g. ./results or s3://bucket/prefix")
    _endpoint(p)
    p.set_defaults(handler=ls)

    p = sub.add_parser("sync", help="upload what a storage outage left in the local spool for a run")
    p.add_argument("uri", help="a run's results_uri")
    _endpoint(p)
    p.set_defaults(handler=sync)
    group.set_defaults(handler=lambda args: group.print_help() or 2)


def _endpoint(parser) -> None:
    parser.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
    )


def _options(args):
    from orchestrator.storage import S3Options

    return S3Options(endpoint_url=args.endpoint_url) if args.endpoint_url else None


def show(args) -> int:
    trials = load_trials(args.uri, options=_options(args))
    metric = trials.schema.metadata[b"hpo.metric"].decode()
    mode = trials.schema.metadata[b"hpo.mode"].decode()
    rows = trials.to_pylist()
    scored = sorted(
        (r for r in rows if r[f"best_{metric}"] is not None),
        key=lambda r: r[f"best_{metric}"] * (1 if mode == "min" else -1),
    )
    shown = (scored + [r for r in rows if r[f"best_{metric}"] is None])[: max(0, args.top)]
    columns = ["trial_id", "status", "iterations", f"best_{metric}", "best_iteration"]
    columns += [c for c in trials.column_names if c.startswith(CONFIG_PREFIX)]
    print(f"{len(rows)} trials, ranked by best {metric} ({mode}); top {len(shown)}:")
    print_table(columns, [{c: r.get(c) for c in columns} for r in shown])
    return 0


def pull(args) -> int:
    from orchestrator.results.ops import pull as pull_run

    report = pull_run(args.uri, args.to, checkpoints=args.checkpoints, options=_options(args))
    print(
        f"pulled {report.files} files ({report.bytes / 1e6:.2f} MB; {report.rows_files} results file(s), "
        f"{report.checkpoints} checkpoint(s)) to {report.destination}"
    )
    return 0


def ls(args) -> int:
    from orchestrator.results.ops import list_runs

    runs = list_runs(args.storage, options=_options(args))
    if not runs:
        print(f"no runs under {args.storage}")
        return 0
    print_table(
        ["name", "run_id", "status", "time", "objects", "size_mb", "uri"],
        [
            {
                "name": r.name,
                "run_id": r.run_id,
                "status": r.status,
                "time": r.time,
                "objects": r.objects,
                "size_mb": f"{r.bytes / 1e6:.2f}",
                "uri": r.uri,
            }
            for r in runs
        ],
    )
    return 0


def sync(args) -> int:
    from orchestrator.results.ops import sync as sync_run

    uploaded, waiting = sync_run(args.uri, options=_options(args))
    if waiting:
        print(
            f"uploaded {uploaded} item(s); {waiting} still wait (storage unreachable?); run this again later"
        )
        return EXIT_UNSYNCED
    print(f"uploaded {uploaded} item(s); nothing waits for {args.uri}")
    return 0
