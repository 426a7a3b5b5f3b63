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
from dataclasses import dataclass
from pathlib import Path

from ray.job_submission import JobSubmissionClient

from orchestrator.errors import RunError
from orchestrator.results.layout import SPEC_FILE, new_run_id, results_uri_for
from orchestrator.spec import EnsembleSpec, JobSpec
from orchestrator.storage import shared_by_all_nodes

SPEC_IN_JOB = f".hpo/{SPEC_FILE}"
METADATA_KEY = "hpo"
DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


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
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), DEFAULT_TOKEN_FILE):
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


def _explain(exc: Exception, url: str) -> str:
    text = str(exc)
    if "401" in text or "Authentication required" in text:
        return f"{url} requires a Ray auth token: set RAY_AUTH_TOKEN or pass --token-file"
    if "403" in text or "Authentication failed" in text:
        return f"{url} refused the Ray auth token (wrong token?)"
    if "not found" in text.lower() and "job" in text.lower():
        return text.splitlines()[0][:300]
    return f"cannot reach Ray's Jobs API at {url} ({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''})"


def call(fn, url: str, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        raise RunError(_explain(exc, url)) from None
    except Exception as exc:
        raise RunError(_explain(exc, url)) from None


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
        argv = ["hpo", "run", SPEC_IN_JOB, "--address", "auto", "--run-id", run_id, "--output", "json"]
        if storage:
            argv += ["--storage", storage]
        submission_id = f"hpo-{spec.name}-{secrets.token_hex(3)}"
        call(
            jobs.submit_job,
            url,
            entrypoint=shlex.join(argv),
            submission_id=submission_id,
            runtime_env={"working_dir": staging},
            metadata={METADATA_KEY: "1", "name": spec.name, "results_uri": results_uri},
        )
    return Submission(submission_id, results_uri)
