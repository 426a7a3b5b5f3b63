"""hpo results show | pull | ls | sync: stored runs, local or s3://."""

from __future__ import annotations

import json

from orchestrator.cli.common import EXIT_UNSYNCED, CliError
from orchestrator.cli.output import gpu_idle_note, print_table
from orchestrator.errors import ResultsNotFound
from orchestrator.results import CONFIG_PREFIX, load_results, load_trials
from orchestrator.results.ops import list_runs
from orchestrator.results.ops import pull as pull_run
from orchestrator.results.ops import sync as sync_run
from orchestrator.results.reader import (
    best_per_trial,
    constraints_of,
    objectives_of,
    pareto_front,
    search_metric,
)
from orchestrator.results.summary import ledger_totals
from orchestrator.storage import S3Options
from orchestrator.storage.spool import waiting_runs


def _options(args):
    return S3Options(endpoint_url=args.endpoint_url) if args.endpoint_url else None


def show(args) -> int:
    trials = load_trials(args.uri, options=_options(args))
    metric, mode = search_metric(trials)
    rows = trials.to_pylist()
    try:  # the rows are the truth: a running trial's record lags its reports
        best = best_per_trial(load_results(args.uri, options=_options(args)))
    except ResultsNotFound:
        best = {}
    for r in rows:
        if r["trial_id"] in best:
            r["iterations"], r[f"best_{metric}"], r["best_iteration"] = best[r["trial_id"]]
    scored = sorted(
        (r for r in rows if r[f"best_{metric}"] is not None),
        key=lambda r: r[f"best_{metric}"] * (1 if mode == "min" else -1),
    )
    shown = (scored + [r for r in rows if r[f"best_{metric}"] is None])[: max(0, args.top)]
    columns = ["trial_id", "status", "iterations", f"best_{metric}", "best_iteration"]
    columns += ["feasible"] if "feasible" in trials.column_names else []
    config_columns = [c for c in trials.column_names if c.startswith(CONFIG_PREFIX)]
    front = pareto_front(trials)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "trials": len(rows),
                    "metric": metric,
                    "mode": mode,
                    "top": [{c: r.get(c) for c in columns + config_columns} for r in shown],
                    "objectives": [[o.metric, o.mode] for o in objectives_of(trials)],
                    "constraints": [str(c) for c in constraints_of(trials)],
                    "front": front,
                },
                default=str,
            )
        )
        return 0
    print(f"{len(rows)} trials, ranked by best {metric} ({mode}); top {len(shown)}:")
    print_table(columns + config_columns, [{c: r.get(c) for c in columns + config_columns} for r in shown])
    if front is not None:
        objectives = objectives_of(trials)
        named = ", ".join(f"{o.metric} ({o.mode})" for o in objectives)
        print(f"Pareto front: {len(front)} trial(s) no other finished, feasible trial beats on {named}:")
        front_columns = ["trial_id", *(f"last_{o.metric}" for o in objectives), *config_columns]
        by_id = {r["trial_id"]: r for r in rows}
        print_table(front_columns, [{c: by_id[t["trial_id"]].get(c) for c in front_columns} for t in front])
    if line := ledger_line(rows):
        print(line)
    return 0


def export(args) -> int:
    from orchestrator.practice.export import Trials, to_mlflow, to_tensorboard

    if not (args.mlflow or args.tensorboard):
        raise CliError("hpo results export: say where to: --mlflow TRACKING_URI and/or --tensorboard DIR")
    if args.experiment and not args.mlflow:
        raise CliError("--experiment names an MLflow experiment: give --mlflow TRACKING_URI too")
    trials = Trials(args.uri, options=_options(args))
    if args.mlflow:
        written, there = to_mlflow(trials, args.mlflow, args.experiment)
        print(
            f"mlflow: {written} trial(s) of run {trials.run_id} written to experiment "
            f"{args.experiment or trials.job!r} at {args.mlflow}"
            + (f"; {there} were there already" if there else "")
        )
    if args.tensorboard:
        written, there = to_tensorboard(trials, args.tensorboard)
        print(
            f"tensorboard: {written} trial(s) written under {args.tensorboard}/{trials.run_id}"
            + (f"; {there} were there already" if there else "")
            + f" (tensorboard --logdir {args.tensorboard})"
        )
    return 0


def ledger_line(rows: list[dict]) -> str:
    """The job's totals from its trial records (their ledger columns), as run.json and the run's summary give
    them (results/summary.py's ledger_totals): held hours, retries, preemptions, cost."""
    if not rows or "wall_s" not in rows[0]:
        return ""  # a run stored before the ledger existed
    rows = sorted(rows, key=lambda r: r["trial_id"])
    total = ledger_totals(rows, priced=any(r.get("cost") is not None for r in rows))
    retries, preemptions = (sum(r.get(k) or 0 for r in rows) for k in ("retries", "preemptions"))
    cost = ""
    if total["cost"] is not None:
        by_type = ", ".join(f"{k} {v:.4g}" for k, v in total["cost_by_node_type"].items())
        cost = f"; cost {total['cost']:.4g} ({by_type})"
    return (
        f"ledger: {total['trial_hours']:.4g} trial-hours, {total['cpu_hours']:.4g} CPU-hours, "
        f"{total['gpu_hours']:.4g} GPU-hours{gpu_idle_note(total)}; {retries} retries, {preemptions} "
        f"preemptions{cost}"
    )


def pull(args) -> int:

    report = pull_run(args.uri, args.to, checkpoints=args.checkpoints, options=_options(args))
    print(
        f"pulled {report.files} files ({report.bytes / 1e6:.2f} MB; {report.rows_files} results file(s) of "
        f"{report.rows} rows, each decoded; {report.checkpoints} checkpoint(s)) to {report.destination}"
        + (" (an earlier pull of this run, brought up to date)" if report.updated else "")
    )
    return 0


def ls(args) -> int:

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
    if args.uri is None:  # (an empty URI is refused below, as every command refuses it)
        waiting_now = waiting_runs()
        if not waiting_now:
            print("nothing waits in the local spool")
            return 0
        for uri, count in waiting_now:
            print(f"{count} item(s) wait for {uri}  (hpo results sync {uri})")
        return EXIT_UNSYNCED
    uploaded, waiting = sync_run(args.uri, options=_options(args))
    if waiting:
        print(
            f"uploaded {uploaded} item(s); {waiting} still wait (storage unreachable?); run this again later"
        )
        return EXIT_UNSYNCED
    print(f"uploaded {uploaded} item(s); nothing waits for {args.uri}")
    return 0
