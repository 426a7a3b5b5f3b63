"""Every `hpo` command and option. A command names its handler as "module:function" in this package; main()
imports that module only when the command runs, so `hpo --help` and `hpo validate` never import Ray or torch."""

from __future__ import annotations

import argparse
import sys

from orchestrator.spec import DEFAULT_ENSEMBLE_METHOD, ENSEMBLE_METHODS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        command = self.prog.split(" ", 1)[-1] if " " in self.prog else ""
        print(
            f"hpo: {message} (see hpo {command} --help)".replace("hpo  --help", "hpo --help"), file=sys.stderr
        )
        raise SystemExit(2)


def _output(parser, what: str = "one JSON object") -> None:
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help=f"json: the last line of stdout is {what}"
    )


def _ray_options(parser) -> None:
    """The options of commands that run a job: hpo run and hpo resume."""
    _output(parser, "the summary as one JSON object")
    parser.add_argument("--address", help="join this Ray cluster instead of starting an embedded one")
    parser.add_argument(
        "--num-cpus", type=float, help="logical CPUs for the embedded Ray (default: enough for the job)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")


def _endpoint(parser) -> None:
    parser.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
    )


def _connection(parser) -> None:
    parser.add_argument(
        "--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)"
    )
    parser.add_argument(
        "--token-file",
        help="file holding the Ray auth token (default: RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
    )


def _jobs(commands) -> None:
    p = commands.add_parser("validate", help="check a job spec; exit 2 with the reason if it is bad")
    p.add_argument("spec", help="path to a YAML job spec")
    p.set_defaults(handler="spec_cmds:validate")

    p = commands.add_parser("schema", help="print the job spec's JSON Schema")
    p.set_defaults(handler="spec_cmds:schema")

    p = commands.add_parser("run", help="run a job on an embedded Ray (or --address) and write its results")
    p.add_argument("spec", help="path to a YAML job spec")
    p.add_argument(
        "--storage", help="override the spec's storage (a folder, file://... or s3://bucket/prefix)"
    )
    _ray_options(p)
    p.add_argument("--run-id", help=argparse.SUPPRESS)  # chosen by `hpo submit`, so it knows the results URI
    p.set_defaults(handler="job_cmds:run")

    p = commands.add_parser(
        "resume", help="continue a run whose driver died, from its storage (local or s3://)"
    )
    p.add_argument("uri", help="the run's results_uri (printed by hpo run)")
    p.add_argument("--spec", help="refuse to resume unless this spec is the run's (the difference is named)")
    p.add_argument(
        "--add-trials",
        type=int,
        default=0,
        metavar="N",
        help="grow the run (finished or not) by N trials, its searcher continuing from all of its results",
    )
    _ray_options(p)
    p.set_defaults(handler="job_cmds:resume")


def _results(commands) -> None:
    group = commands.add_parser("results", help="read, copy and list runs' results (local or s3://)")
    sub = group.add_subparsers(dest="results_command", metavar="SUBCOMMAND", parser_class=type(group))

    p = sub.add_parser("show", help="print the top trials of a run")
    p.add_argument("uri", help="a run's results_uri (printed by hpo run)")
    p.add_argument("--top", type=int, default=10, help="how many trials (default 10)")
    _output(p, "the top trials and, with several objectives, the Pareto front, as one JSON object")
    _endpoint(p)
    p.set_defaults(handler="results_cmds:show")

    p = sub.add_parser(
        "pull", help="copy a run's tables to a local folder (a consistent snapshot, even mid-run)"
    )
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument("--to", required=True, help="local folder to copy into")
    p.add_argument("--checkpoints", action="store_true", help="also copy each trial's best checkpoint")
    _endpoint(p)
    p.set_defaults(handler="results_cmds:pull")

    p = sub.add_parser("ls", help="list the jobs and runs under a storage root, with status and size")
    p.add_argument("storage", help="a storage root, e.g. ./results or s3://bucket/prefix")
    _endpoint(p)
    p.set_defaults(handler="results_cmds:ls")

    p = sub.add_parser(
        "sync",
        help="upload what a storage outage left in the local spool for a run; without URI: list what waits",
    )
    p.add_argument("uri", nargs="?", help="a run's results_uri (none: list the runs with uploads waiting)")
    _endpoint(p)
    p.set_defaults(handler="results_cmds:sync")

    p = sub.add_parser(
        "export", help="copy a run's trials into MLflow (--mlflow) and/or TensorBoard (--tensorboard)"
    )
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument(
        "--mlflow",
        metavar="TRACKING_URI",
        help="MLflow tracking: sqlite:///FILE.db, or a local mlruns folder",
    )
    p.add_argument("--experiment", help="the MLflow experiment (default: the job's name)")
    p.add_argument("--tensorboard", metavar="DIR", help="a folder for TensorBoard's event files (HParams)")
    _endpoint(p)
    p.set_defaults(handler="results_cmds:export")
    group.set_defaults(handler=None, help_of=group, bounded_storage=True)


def _practice(commands) -> None:
    p = commands.add_parser(
        "ensemble", help="ensemble the best trials of a finished run; writes ensemble.parquet"
    )
    p.add_argument("uri", help="a finished run's results_uri (printed by hpo run)")
    p.add_argument(
        "--top-k", type=int, default=3, help="members (topk) or selection steps (greedy); default 3"
    )
    p.add_argument(
        "--method",
        choices=tuple(ENSEMBLE_METHODS),
        default=DEFAULT_ENSEMBLE_METHOD,
        help="; ".join(f"{name}: {what}" for name, what in ENSEMBLE_METHODS.items()),
    )
    p.add_argument(
        "--metric",
        help="rank the trials by this objective of a run of several (its value at each trial's last report); "
        "default: the first objective's best report",
    )
    _output(p)
    p.set_defaults(handler="practice_cmds:ensemble")

    p = commands.add_parser(
        "sanity", help="check a workload before searching (loss at init, overfit one batch, ...)"
    )
    p.add_argument("spec", help="path to a YAML job spec")
    p.add_argument("--storage", help="override the spec's storage (where sanity.parquet goes)")
    _output(p)
    p.set_defaults(handler="practice_cmds:sanity")

    p = commands.add_parser(
        "reproduce", help="rerun trials from their recorded configs and seeds; compare bit for bit"
    )
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument(
        "trial_ids", nargs="+", metavar="TRIAL_ID", help="e.g. trial_0003; several rerun one after another"
    )
    _output(p)
    p.set_defaults(handler="practice_cmds:reproduce")

    p = commands.add_parser("analyze", help="learning curves, isolation plots and warnings for a run")
    p.add_argument("uri", help="a run's results_uri")
    p.add_argument("--out", required=True, help="folder for the PNG plots and report.txt")
    p.set_defaults(handler="practice_cmds:analyze")

    p = commands.add_parser(
        "dashboard", help="serve a live, read-only web page of the runs under a storage root (local or s3://)"
    )
    p.add_argument(
        "uri", metavar="STORAGE_OR_RUN_URI", help="a storage root (opens on its newest run) or a run"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument(
        "--token",
        help="require this token of every request (default: HPO_DASHBOARD_TOKEN); needed off loopback",
    )
    _endpoint(p)
    p.set_defaults(handler="dashboard_cmds:dashboard")


NODE = "node"  # `hpo node ARGS`: ARGS are `ray start`'s, passed on whole (cli.main dispatches it before argparse)


def _cluster(commands) -> None:
    p = commands.add_parser(
        NODE,
        add_help=False,  # `hpo node --help` is ray start's
        help="start this machine's Ray node as `ray start ARGS` does (the same options), its trial processes "
        "forked with torch imported: hpo node --head / hpo node --address HEAD:6379",
    )
    p.add_argument("ray_start_args", nargs=argparse.REMAINDER, help="`ray start`'s options")
    p.set_defaults(handler="cluster_cmds:node")
    p = commands.add_parser("submit", help="validate a spec and submit it to a Ray cluster as `hpo run`")
    p.add_argument("spec", help="path to a YAML job spec")
    p.add_argument("--working-dir", help="ship this folder (your workload code) with the job")
    p.add_argument("--storage", help="override the spec's storage (s3://... or a path every node shares)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    _connection(p)
    p.set_defaults(handler="cluster_cmds:submit")
    for name, help_text in (
        ("status", "print a submitted job's status"),
        ("logs", "print a submitted job's logs"),
        ("stop", "stop a submitted job"),
    ):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("submission_id")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        _connection(p)
        p.set_defaults(handler=f"cluster_cmds:{name}")
    p = commands.add_parser("list", help="list the jobs submitted with hpo")
    _connection(p)
    p.set_defaults(handler="cluster_cmds:list_jobs")


def _warm(commands) -> None:
    p = commands.add_parser(
        "up",
        help="start a warm local Ray (trial processes ready, torch imported) that hpo run and hpo resume "
        "started from this directory join until hpo down",
    )
    p.add_argument(
        "--num-cpus", type=float, help="logical CPUs of its Ray (default: this machine's cores, plus one)"
    )
    p.set_defaults(handler="job_cmds:up")
    p = commands.add_parser("down", help="stop the warm local Ray of hpo up and everything it started")
    p.set_defaults(handler="job_cmds:down")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpo", description="Hyperparameter optimization jobs on Ray.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for group in (_jobs, _warm, _results, _practice, _cluster):
        group(commands)
    return parser
