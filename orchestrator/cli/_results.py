"""hpo results show."""

from __future__ import annotations

from orchestrator.results import CONFIG_PREFIX, load_trials


def register(commands) -> None:
    group = commands.add_parser("results", help="read a run's results")
    sub = group.add_subparsers(dest="results_command", metavar="SUBCOMMAND", parser_class=type(group))
    p = sub.add_parser("show", help="print the top trials of a run")
    p.add_argument("uri", help="a run's results_uri (printed by hpo run)")
    p.add_argument("--top", type=int, default=10, help="how many trials (default 10)")
    p.set_defaults(handler=show)
    group.set_defaults(handler=lambda args: group.print_help() or 2)


def show(args) -> int:
    trials = load_trials(args.uri)
    metric = trials.schema.metadata[b"hpo.metric"].decode()
    mode = trials.schema.metadata[b"hpo.mode"].decode()
    rows = [r for r in trials.to_pylist()]
    scored = sorted((r for r in rows if r[f"best_{metric}"] is not None),
                    key=lambda r: r[f"best_{metric}"] * (1 if mode == "min" else -1))
    unscored = [r for r in rows if r[f"best_{metric}"] is None]
    shown = (scored + unscored)[:max(0, args.top)]
    columns = ["trial_id", "status", "iterations", f"best_{metric}", "best_iteration"]
    columns += [c for c in trials.column_names if c.startswith(CONFIG_PREFIX)]
    print(f"{len(rows)} trials, ranked by best {metric} ({mode}); top {len(shown)}:")
    _print_table(columns, shown)
    return 0


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _print_table(columns: list[str], rows: list[dict]) -> None:
    headers = [c.removeprefix(CONFIG_PREFIX) for c in columns]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
