"""hpo submit | status | logs | stop | list: jobs on a Ray cluster through its Jobs API."""

from __future__ import annotations

import asyncio
import sys
import time

from orchestrator.cli.common import EXIT_FAILED, read_spec
from orchestrator.cli.output import print_table
from orchestrator.execution.submit import METADATA_KEY, call, client, resolve_address
from orchestrator.execution.submit import submit as submit_job

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _jobs(args):

    return client(args.address, args.token_file), resolve_address(args.address)


def submit(args) -> int:

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

    jobs, url = _jobs(args)
    print(str(call(jobs.get_job_status, url, args.submission_id).value))
    return 0


def logs(args) -> int:

    jobs, url = _jobs(args)
    if args.follow:
        return _follow(args, args.submission_id)
    print(call(jobs.get_job_logs, url, args.submission_id), end="")
    return 0


def stop(args) -> int:

    jobs, url = _jobs(args)
    stopped = call(jobs.stop_job, url, args.submission_id)
    print(f"{args.submission_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def list_jobs(args) -> int:

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
