"""Ray's errors: what an error wraps, whether a node was lost, a refused token; and Ray's error text, read here only."""

from __future__ import annotations

import contextlib

import ray


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
