"""Errors a user can act on, and the helper that makes their messages point at the fix.

The CLI prints each as one line, without a traceback: SpecError, RunError, ResultsNotFound and storage's
StoreError exit 2 (nothing was started or written); SanityFailed exits 1. Every package raises these rather
than its own, so the CLI needs no knowledge of where an error came from.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(ValueError):
    """A job spec that cannot run. `str()` is one line: where, what, and what is allowed."""


class RunError(RuntimeError):
    """The job cannot run as asked (e.g. on these resources); the message says what to change."""


class SanityFailed(RuntimeError):
    """`sanity: true` and a check failed: the search did not start (exit 1; sanity.parquet says why)."""


class ResultsNotFound(FileNotFoundError):
    """A results URI that holds no run (or not the part asked for); the message names the URI."""


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """ "did you mean 'grid'? " when `value` is close to one of `allowed`, else ""."""
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def not_allowed(value: object, allowed: Iterable[str], what: str = "") -> str:
    """ "'grdi' is not allowed (did you mean 'grid'? allowed: random, grid, ...)", with `what` before the value."""
    allowed = list(allowed)
    return f"{what}{value!r} is not allowed ({did_you_mean(value, allowed)}allowed: {', '.join(allowed)})"
