"""Errors a user can act on, and the helper that makes their messages point at the fix.

The CLI prints each as one line, without a traceback: SpecError, RunError, ResultsNotFound and storage's
StoreError exit 2 (nothing was started or written); SanityFailed and WorkloadCodeFailed exit 1. Every package raises these rather
than its own, so the CLI needs no knowledge of where an error came from.
"""

from __future__ import annotations

import difflib
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path


class SpecError(ValueError):
    """A job spec that cannot run. `str()` is one line: where, what, and what is allowed."""


class RunError(RuntimeError):
    """The job cannot run as asked (e.g. on these resources); the message says what to change."""


class SanityFailed(RuntimeError):
    """`sanity: true` and a check failed: the search did not start (exit 1; sanity.parquet says why)."""


class WorkloadCodeFailed(RuntimeError):
    """The workload's own code raised while a command ran it in this process (hpo reproduce, hpo sanity): one
    line with the exception and where its full traceback was written (exit 1)."""

    @classmethod
    def logged(cls, what: str, error: BaseException) -> WorkloadCodeFailed:
        """Write `error`'s traceback to a log file; the error names the exception and the log."""
        log = Path(tempfile.mkstemp(prefix="hpo-workload-", suffix=".log")[1])
        log.write_text("".join(traceback.format_exception(error)))
        last = (traceback.format_exception_only(error)[-1].strip() or type(error).__name__).splitlines()[0]
        return cls(f"{what}: the workload's code raised {last[:300]} (full traceback: {log})")


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
