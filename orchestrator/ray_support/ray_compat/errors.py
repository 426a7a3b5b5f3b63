"""Ray's errors: what an error wraps, whether a node was lost, a refused token; and Ray's error text, read here only."""

from __future__ import annotations

import contextlib
import re
import traceback

import ray

from orchestrator.errors import describe_traceback_text


def errors_within(error: BaseException | None):
    """`error` and every error it wraps: through Ray 2.60's RayTaskError (its cause), Ray Train V2's
    WorkerGroupError (`worker_failures`, per rank) and ControllerError, and exception chaining."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, ray.exceptions.RayTaskError):
            with contextlib.suppress(Exception):
                todo.append(e.as_instanceof_cause())
            todo.append(getattr(e, "cause", None))
        todo.extend(getattr(e, "worker_failures", {}).values())
        todo.extend([getattr(e, "controller_failure", None), e.__cause__, e.__context__])


def contains_error(error: BaseException | None, error_class: type[BaseException]) -> bool:
    """Whether `error` is, or wraps, an `error_class` (see errors_within)."""
    return any(isinstance(e, error_class) for e in errors_within(error))


NODE_DEATH_TEXTS = (
    "The actor died because its node has died",  # Ray 2.60's core worker, for an actor on a dead node
    "the actor's node was preempted",  # ... and for one on a node drained for preemption
    "PreemptionError",  # Ray Train V2: a worker group on a draining node
)


def lost_node_error(error: BaseException | None) -> bool:
    """Whether `error` (or what it wraps) says a node was lost: a RayActorError marked preempted (Ray 2.60 marks
    an actor on a node drained for preemption), Ray Train V2's PreemptionError, or Ray's text for an actor whose
    node died (SIGKILL, a kernel panic, a cut cable: Ray cannot tell those apart from the node's silence)."""
    return any(
        (isinstance(e, ray.exceptions.RayActorError) and e.preempted)
        or type(e).__name__ == "PreemptionError"
        or any(text in str(e) for text in NODE_DEATH_TEXTS)
        for e in errors_within(error)
    )


def preempted_error(message: str) -> BaseException:
    """An error that Ray Tune 2.60 retries without counting it as a failure (Trial._handle_ray_actor_error skips
    a preempted RayActorError): a multi-worker trial whose group lost a node raises it."""
    return ray.exceptions.RayActorError(error_msg=message, preempted=True)


def is_refused_token(error: BaseException) -> bool:
    """Ray 2.60: whether joining failed because the cluster refused this driver's auth token (an
    AuthenticationError, or a ConnectionError caused by one, or whose text names InvalidAuthToken)."""
    from ray.exceptions import AuthenticationError

    cause = error if isinstance(error, AuthenticationError) else error.__cause__
    return isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause)


# -- Ray's error text: the only place hpo reads it -----------------------------------------------------------
def raised_in(text: str, error_class: type[BaseException]) -> str | None:
    """Ray 2.60 keeps an error raised in a trial as text (Tune's error file, a RayTaskError's message), naming the
    exception by its class, dotted or not, before its message (`ReportError: ...`). If `text` names
    `error_class`: what follows `Name: ` (all of `text` where that is not found); else None."""
    name = error_class.__name__
    if name not in text:
        return None
    _, sep, rest = text.partition(f"{name}: ")
    return rest if sep else text


def message_of(error: BaseException, error_class: type[BaseException]) -> str | None:
    """The message of the `error_class` error that `error` carries, read off the first line of Ray's text of
    `error` that names it (a Ray Train WorkerGroupError holds each rank's error as text); None if none does."""
    name = error_class.__name__
    for line in str(error).splitlines():
        if name in line:
            return line.split(f"{name}:", 1)[-1].strip()
    return None


WORKER_DIED_TEXT = "worker process has died"  # Ray 2.60's text for a rank whose process died
_EXIT = re.compile(r"Worker exit type: (\w+)")  # ... and how (SYSTEM_ERROR, INTENDED_USER_EXIT, ...)


def group_failure_line(error: BaseException) -> str:
    """One line for a Ray Train worker group's failure (a WorkerGroupError's `worker_failures`, per rank): the
    first failed rank and what it raised (and where, in the user's code), or that its process died."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        return f"the worker group failed: {describe_traceback_text(str(error)) or type(error).__name__}"
    texts = {rank: "".join(traceback.format_exception(e)) for rank, e in failures.items()}
    died = {r for r, e in failures.items() if isinstance(e, ray.exceptions.ActorDiedError)} | {
        r for r, t in texts.items() if WORKER_DIED_TEXT in t
    }
    # a rank whose process died is the cause; its peers only see their collectives break
    rank = min(died or failures)
    text = texts[rank]
    if rank in died:
        exit_type = _EXIT.search(text)
        how = f" ({exit_type.group(1)})" if exit_type else ""
        return f"the worker group failed: rank {rank}'s process died{how}"
    return f"the worker group failed: rank {rank} raised {describe_traceback_text(text)}"


# Ray 2.60's Jobs API client (JobSubmissionClient) raises with the HTTP status and the server's text in its
# message; these are the ones hpo tells apart.
JOBS_AUTH_REQUIRED = ("401", "Authentication required")
JOBS_AUTH_REFUSED = ("403", "Authentication failed")
JOBS_NOT_FOUND = ("404", "does not exist", "not found")
JOBS_REQUEST_FAILED = "Request failed"  # its HTTP errors start so
JOBS_SERVER_ERROR = f"{JOBS_REQUEST_FAILED} with status code 500: "
JOBS_NO_AGENT = "No available agent to submit job"  # a head just started: no Jobs agent has registered yet


def jobs_api_error(error: BaseException, *, about_a_job: bool = False) -> tuple[str, str]:
    """What Ray's Jobs API client said: (kind, detail). kind: "auth-required", "auth-refused", "not-found" (only
    for a call `about_a_job`), "server-error" (detail: the server's first line), or "other" (detail: the error's
    first line)."""
    text = str(error)
    first = text.splitlines()[0] if text else ""
    if any(t in text for t in JOBS_AUTH_REQUIRED):
        return "auth-required", first
    if any(t in text for t in JOBS_AUTH_REFUSED):
        return "auth-refused", first
    if about_a_job and any(t.lower() in text.lower() for t in JOBS_NOT_FOUND):
        return "not-found", first
    if "500" in text and JOBS_REQUEST_FAILED in text:
        return "server-error", first.removeprefix(JOBS_SERVER_ERROR).rstrip(".")
    return "other", first


def no_jobs_agent(error: BaseException) -> bool:
    """Whether Ray's Jobs API refused a submission because no Jobs agent has registered yet."""
    return JOBS_NO_AGENT in str(error)


# Every piece of Ray's text read here: tests/test_fence.py fails on any of them (but a bare HTTP status) in a
# string outside ray_support/
RAY_TEXTS = (
    *NODE_DEATH_TEXTS,
    WORKER_DIED_TEXT,
    "Worker exit type",
    "InvalidAuthToken",
    *JOBS_AUTH_REQUIRED,
    *JOBS_AUTH_REFUSED,
    JOBS_REQUEST_FAILED,
    JOBS_NO_AGENT,
)
