"""Submit jobs to a Ray cluster through the Jobs API, and follow them: status, logs, stop, list.

The spec is validated here, before anything reaches the cluster. It travels in the job's runtime_env
working_dir (with the user's --working-dir, if any) and the entrypoint is built with shlex, so no spec value
ever reaches a shell unquoted. The run id is chosen here, so the results URI is known at submission.

Token authentication (Ray 2.59+): the token comes from --token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token, is sent as a bearer header on every call, and is never printed or logged.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ray.job_submission import JobSubmissionClient

from orchestrator.errors import RunError
from orchestrator.ray_support.ray_compat import jobs_api_error, no_jobs_agent
from orchestrator.results.layout import SPEC_FILE, new_run_id, results_uri_for
from orchestrator.spec import EnsembleSpec, JobSpec
from orchestrator.stopping import GRACE_ENV, SUBMITTED_ENV, stop_grace_s
from orchestrator.storage import shared_by_all_nodes

SPEC_IN_JOB = f".hpo/{SPEC_FILE}"
METADATA_KEY = "hpo"


def default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"  # Ray's own default; looked up when asked (HOME may change)


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RunError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address if "://" in address else f"http://{address}"


def resolve_token(token_file: str | None = None) -> str | None:
    """The auth token, or None if none is configured (the cluster may not use token auth)."""
    if token_file:
        path = Path(token_file).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise RunError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), default_token_file()):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip()
    return None


def client(address: str | None, token_file: str | None = None):
    """A JobSubmissionClient, with a one-line RunError for an unreachable address or a refused token."""
    url = resolve_address(address)
    token = resolve_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError here
        raise RunError(_explain(exc, url)) from None


def _explain(exc: Exception, url: str, job: str | None = None) -> str:
    """Ray's error, as a sentence that says what happened and what to do."""
    kind, detail = jobs_api_error(exc, about_a_job=job is not None)
    if kind == "auth-required":
        return f"the cluster at {url} requires a Ray auth token; set RAY_AUTH_TOKEN or pass --token-file."
    if kind == "auth-refused":
        return f"the cluster at {url} refused the Ray auth token; check RAY_AUTH_TOKEN or --token-file."
    if kind == "not-found":
        return f"there is no job {job!r} on the cluster at {url}; `hpo list` shows the jobs there."
    if kind == "server-error":
        return f"the cluster at {url} could not do it: {detail[:300]}."
    first = detail[:200] or type(exc).__name__
    return f"cannot reach Ray's Jobs API at {url} ({type(exc).__name__}: {first}); is the address right and the head up?"


def call(fn, url: str, *args, job: str | None = None, **kwargs):
    """`fn(*args, **kwargs)` of Ray's JobSubmissionClient, its errors as a RunError of one line; `job`: the
    submission id the call is about (a 404 then means there is no such job)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # Ray raises RuntimeError for HTTP errors, others for the connection
        raise RunError(_explain(exc, url, job)) from None


AGENT_WAIT_S = (
    60.0  # how long `hpo submit` waits for a Jobs agent that is still starting (a head just started)
)


def submit_when_ready(jobs, url: str, progress, *, wait_s: float = AGENT_WAIT_S, **job) -> str:
    """jobs.submit_job(**job), waiting (bounded) for the head's Jobs agent: right after `ray start --head` the
    Jobs API answers before any agent has registered, and refuses submissions until one has."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return jobs.submit_job(**job)
        except Exception as exc:
            if not no_jobs_agent(exc) or time.monotonic() >= deadline:
                raise RunError(_explain(exc, url)) from None
        if not said:
            progress(f"waiting for the cluster's Jobs agent to start (up to {wait_s:.0f}s)...")
            said = True
        time.sleep(1.0)


# What the job needs beyond the grace period to write its tables and run.json after `hpo stop`, before Ray's job
# supervisor sends SIGKILL (its own default wait is 3 s: a stop would look like a SIGKILL).
WRITE_TIME_S = 40


def stop_env() -> dict[str, str]:
    """The job's environment for `hpo stop`: the driver knows a SIGTERM is the Jobs API's stop (status
    `stopped`), its grace period is this machine's HPO_STOP_GRACE_S, and Ray's supervisor waits for it."""
    grace = stop_grace_s()
    return {
        SUBMITTED_ENV: "1",
        GRACE_ENV: f"{grace:g}",
        "RAY_JOB_STOP_WAIT_TIME_S": str(int(grace + WRITE_TIME_S)),
    }


@dataclass
class Submission:
    submission_id: str
    results_uri: str


def submit(
    spec: JobSpec | EnsembleSpec,
    spec_text: str,
    *,
    address: str | None,
    token_file: str | None = None,
    working_dir: str | None = None,
    storage: str | None = None,
    progress=lambda line: None,
) -> Submission:
    """Submit `spec` (already validated) to run as `hpo run` on the cluster."""
    target = spec.run if isinstance(spec, EnsembleSpec) else storage or spec.storage
    if not shared_by_all_nodes(target):
        raise RunError(
            f"storage {target!r} is relative: on a cluster it would land in the job's temporary "
            "directory; use s3://bucket/prefix or an absolute path every node shares (--storage)"
        )
    run_id = new_run_id()
    results_uri = (
        spec.run
        if isinstance(spec, EnsembleSpec)
        else results_uri_for(storage or spec.storage, spec.name, run_id)
    )
    jobs = client(address, token_file)
    url = resolve_address(address)
    with tempfile.TemporaryDirectory(prefix="hpo-submit-") as staging:
        if working_dir:
            shutil.copytree(
                working_dir,
                staging,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv", "results"),
            )
        (Path(staging) / SPEC_IN_JOB).parent.mkdir(parents=True, exist_ok=True)
        (Path(staging) / SPEC_IN_JOB).write_text(spec_text)
        # the job's log ends with the summary a person reads (`hpo logs --follow` shows it; `hpo status` and
        # the results tables give the same figures to programs)
        argv = ["hpo", "run", SPEC_IN_JOB, "--address", "auto", "--run-id", run_id]
        if storage:
            argv += ["--storage", storage]
        submission_id = f"hpo-{spec.name}-{secrets.token_hex(3)}"
        submit_when_ready(
            jobs,
            url,
            progress,
            entrypoint=shlex.join(argv),
            submission_id=submission_id,
            runtime_env={"working_dir": staging, "env_vars": stop_env()},
            metadata={METADATA_KEY: "1", "name": spec.name, "results_uri": results_uri},
        )
    return Submission(submission_id, results_uri)
