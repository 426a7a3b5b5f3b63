"""hpo submit | status | logs | stop | list: jobs on a Ray cluster through its Jobs API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

from orchestrator.cli.common import EXIT_FAILED, CliError, read_spec
from orchestrator.cli.output import print_table
from orchestrator.errors import ResultsNotFound
from orchestrator.results.ops import run_progress
from orchestrator.stopping import DEFAULT_GRACE_S, GRACE_ENV
from orchestrator.storage import StoreError
from orchestrator.submit.jobs import METADATA_KEY, call, client, resolve_address
from orchestrator.submit.jobs import submit as submit_job

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _jobs(args):

    return client(args.address, args.token_file), resolve_address(args.address)


def submit(args) -> int:
    spec_path = os.path.abspath(args.spec)
    if args.working_dir and not os.path.isdir(args.working_dir):
        raise CliError(
            f"--working-dir {args.working_dir}: no such directory; give the folder of your workload code"
        )
    # a bad spec never reaches the cluster; its workload is imported from where the job will run it
    with contextlib.chdir(args.working_dir) if args.working_dir else contextlib.nullcontext():
        spec = read_spec(spec_path)
    with open(spec_path) as fh:
        text = fh.read()
    submission = submit_job(
        spec,
        text,
        address=args.address,
        token_file=args.token_file,
        working_dir=args.working_dir,
        storage=args.storage,
        progress=lambda line: print(f"hpo: {line}", file=sys.stderr, flush=True),
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
        state = str(call(jobs.get_job_status, url, submission_id, job=submission_id).value)
        if state in TERMINAL:
            break
        time.sleep(1)
    print(f"job {submission_id}: {state}", file=sys.stderr)
    return 0 if state == "SUCCEEDED" else EXIT_FAILED


def status(args) -> int:
    """The job's state on the first line; then, where its results can be read from here, how far it is."""
    jobs, url = _jobs(args)
    job = call(jobs.get_job_info, url, args.submission_id, job=args.submission_id)
    print(str(job.status.value))
    start = job.start_time / 1000 if job.start_time else None
    end = job.end_time / 1000 if job.end_time else None
    elapsed = f"elapsed {_duration((end or time.time()) - start)}" if start else ""
    uri = (job.metadata or {}).get("results_uri")
    progress = None
    if uri and (job.metadata or {}).get(METADATA_KEY) == "1":
        try:
            progress = run_progress(uri)
        except (ResultsNotFound, StoreError, OSError, ValueError) as exc:
            print(f"results: {uri} (nothing readable from here yet: {str(exc).splitlines()[0][:200]})")
    if progress is None:  # not an hpo job, or its results are not readable from this machine
        if elapsed:
            print(elapsed)
        return 0
    best = progress.best
    best_text = (
        f"best {progress.metric}={best[progress.metric]:.4g} ({best['trial_id']} epoch {best['iteration']})"
        if best
        else "no metric reported yet"
    )
    cost = f", cost {progress.cost:.4g}" if progress.cost is not None else ""
    print(f"trials: {progress.done} of {progress.total} done, {progress.running} running; {best_text}")
    print(f"spent: {progress.cpu_hours:.4g} CPU-hours, {progress.gpu_hours:.4g} GPU-hours{cost}; {elapsed}")
    print(f"run: {progress.status}; results: {uri}")
    return 0


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def logs(args) -> int:

    jobs, url = _jobs(args)
    if args.follow:
        return _follow(args, args.submission_id)
    print(call(jobs.get_job_logs, url, args.submission_id, job=args.submission_id), end="")
    return 0


def stop(args) -> int:
    """Ask the Jobs API to stop the job: its driver gets SIGTERM, winds the run down (running trials stop at
    their next report, within the grace period submit gave it), marks it `stopped` and exits."""
    jobs, url = _jobs(args)
    stopped = call(jobs.stop_job, url, args.submission_id, job=args.submission_id)
    if not stopped:
        print(f"{args.submission_id}: already ended; nothing to stop")
        return 0
    job = call(jobs.get_job_info, url, args.submission_id, job=args.submission_id)
    meta = job.metadata or {}
    if meta.get(METADATA_KEY) == "1" and meta.get("results_uri"):
        grace = (job.runtime_env or {}).get("env_vars", {}).get(GRACE_ENV, f"{DEFAULT_GRACE_S:g}")
        print(
            f"{args.submission_id}: stop requested; running trials stop at their next report (within {grace}s), "
            f"then the run is marked stopped. Continue it later with: hpo resume {meta['results_uri']}"
        )
    else:
        print(f"{args.submission_id}: stop requested")
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


def node(ray_start_args: list[str]) -> int:
    """`hpo node ARGS`: `ray start ARGS`, its Python workers forked from a fork server (ray_support/node.py)."""
    from orchestrator.ray_support.node import start_node

    return start_node(ray_start_args)
