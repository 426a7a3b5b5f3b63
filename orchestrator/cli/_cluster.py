"""hpo submit | status | logs | stop | list: jobs on a Ray cluster through its Jobs API."""

from __future__ import annotations

import sys
import time

from orchestrator.cli._common import EXIT_FAILED, print_table, read_spec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _connection(parser) -> None:
    parser.add_argument(
        "--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)"
    )
    parser.add_argument(
        "--token-file",
        help="file holding the Ray auth token (default: RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
    )


def register(commands) -> None:
    p = commands.add_parser("submit", help="validate a spec and submit it to a Ray cluster as `hpo run`")
    p.add_argument("spec", help="path to a YAML job spec")
    p.add_argument("--working-dir", help="ship this folder (your workload code) with the job")
    p.add_argument("--storage", help="override the spec's storage (s3://... or a path every node shares)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    _connection(p)
    p.set_defaults(handler=submit)
    for name, help_text, handler in (
        ("status", "print a submitted job's status", status),
        ("logs", "print a submitted job's logs", logs),
        ("stop", "stop a submitted job", stop),
    ):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("submission_id")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        _connection(p)
        p.set_defaults(handler=handler)
    p = commands.add_parser("list", help="list the jobs submitted with hpo")
    _connection(p)
    p.set_defaults(handler=list_jobs)


def _jobs(args):
    from orchestrator.submit import client, resolve_address

    return client(args.address, args.token_file), resolve_address(args.address)


def submit(args) -> int:
    from orchestrator.submit import submit as submit_job

    spec = read_spec(args.spec)  # a bad spec never reaches the cluster
    with open(args.spec) as fh:
        text = fh.read()
    submission = submit_job(
        spec,
        text,
        address=args.address,
        token_file=args.token_file,
        working_dir=args.working_dir,
        storage=args.storage,
    )
    print(f"results_uri: {submission.results_uri}")
    code = 0
    if args.follow:
        code = _follow(args, submission.submission_id)
    print(submission.submission_id)
    return code


def _follow(args, submission_id: str) -> int:
    import asyncio

    from orchestrator.submit import call

    jobs, url = _jobs(args)

    async def stream():
        async for chunk in jobs.tail_job_logs(submission_id):
            print(chunk, end="", file=sys.stderr, flush=True)

    try:
        asyncio.run(stream())
    except Exception:  # the log stream ends with the job (or the connection); the status says which
        pass
    state = None
    for _ in range(60):
        state = str(call(jobs.get_job_status, url, submission_id).value)
        if state in TERMINAL:
            break
        time.sleep(1)
    print(f"job {submission_id}: {state}", file=sys.stderr)
    return 0 if state == "SUCCEEDED" else EXIT_FAILED


def status(args) -> int:
    from orchestrator.submit import call

    jobs, url = _jobs(args)
    print(str(call(jobs.get_job_status, url, args.submission_id).value))
    return 0


def logs(args) -> int:
    from orchestrator.submit import call

    jobs, url = _jobs(args)
    if args.follow:
        return _follow(args, args.submission_id)
    print(call(jobs.get_job_logs, url, args.submission_id), end="")
    return 0


def stop(args) -> int:
    from orchestrator.submit import call

    jobs, url = _jobs(args)
    stopped = call(jobs.stop_job, url, args.submission_id)
    print(f"{args.submission_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def list_jobs(args) -> int:
    from orchestrator.submit import METADATA_KEY, call

    jobs, url = _jobs(args)
    rows = []
    for job in call(jobs.list_jobs, url):
        meta = job.metadata or {}
        if meta.get(METADATA_KEY) != "1":
            continue
        start = job.start_time / 1000 if job.start_time else None
        end = job.end_time / 1000 if job.end_time else None
        duration = f"{(end or time.time()) - start:.0f}s" if start else "-"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)) if start else "-"
        rows.append(
            {
                "submission_id": job.submission_id,
                "name": meta.get("name", "-"),
                "status": str(job.status.value),
                "start": started,
                "duration": duration,
                "results_uri": meta.get("results_uri", "-"),
            }
        )
    print_table(
        ["submission_id", "name", "status", "start", "duration", "results_uri"],
        sorted(rows, key=lambda r: r["start"]),
    )
    return 0
