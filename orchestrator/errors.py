"""Errors a user can act on, and the helper that makes their messages point at the fix.

The CLI prints each as one line, without a traceback: SpecError, RunError (ResultsDamaged is one),
ResultsNotFound and storage's StoreError exit 2 (nothing was started or written); SanityFailed,
WorkloadCodeFailed and WorkingDirGone exit 1. Every package raises these rather than its own, so the CLI needs
no knowledge of where an error came from.
"""

from __future__ import annotations

import difflib
import re
import sysconfig
import tempfile
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path


class SpecError(ValueError):
    """A job spec that cannot run. `str()` is one line: where, what, and what is allowed."""


class RunError(RuntimeError):
    """The job cannot run as asked (e.g. on these resources); the message says what to change."""


class WorkingDirGone(RunError):
    """This process's working directory was deleted under it (exit 1 once a run started: the run is failed)."""


def working_directory() -> str:
    """os.getcwd(), or one line that says the directory is gone. On a Ray cluster whose nodes share one temp dir
    (several nodes on one machine), each node re-extracts a submitted job's working_dir into the same place,
    deleting the copy the driver runs in; a bare os.getcwd() then raises FileNotFoundError."""
    import os

    try:
        return os.getcwd()
    except FileNotFoundError:
        where = os.environ.get("PWD", "")
        raise WorkingDirGone(
            f"the driver's working directory {where + ' ' if where else ''}was deleted while it ran (on a Ray "
            "cluster whose nodes share a temp dir, Ray re-extracts a job's working_dir there); run from a "
            "directory that stays"
        ) from None


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


class ResultsDamaged(RunError, ValueError):
    """A stored run's file that is there but cannot be used (cut short, garbage, named by the manifest but gone):
    one line naming the file, what is wrong with it and what can be done (exit 2, as a RunError).

    Not a ResultsNotFound: code that reads "no results yet" as "start from nothing" (a resume, `hpo status` of a
    run that just started) must never take a damaged run for an empty one. A ValueError too, as the JSON and
    Parquet errors it replaces are: code that catches those for an unreadable file catches it."""


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """ "did you mean 'grid'? " when `value` is close to one of `allowed`, else ""."""
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def not_allowed(value: object, allowed: Iterable[str], what: str = "") -> str:
    """ "'grdi' is not allowed (did you mean 'grid'? allowed: random, grid, ...)", with `what` before the value."""
    allowed = list(allowed)
    return f"{what}{value!r} is not allowed ({did_you_mean(value, allowed)}allowed: {', '.join(allowed)})"


_PACKAGE = str(Path(__file__).resolve().parent)
_LIBRARIES = tuple(str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "purelib", "platlib"))


def is_user_frame(filename: str) -> bool:
    """Whether a traceback frame is the user's code: not Python's, an installed library's or hpo's own (the
    built-in workloads count as user code: they are written as a user's would be)."""
    if filename.startswith("<") or "site-packages" in filename or "dist-packages" in filename:
        return False
    if filename.startswith(_PACKAGE):
        return filename.startswith(str(Path(_PACKAGE) / "workloads"))
    return not filename.startswith(_LIBRARIES)


def describe_failure(exception: str, frames: Sequence[tuple[str, int, str]]) -> str:
    """One line for a failure: the exception (a traceback's last line), where it was raised (the innermost frame
    of the user's code) and, when that is another frame, where the user's code was entered (its outermost).
    `frames` are (filename, line, function), outermost first."""
    user = [f for f in frames if is_user_frame(f[0])]
    if not user:
        return exception
    where = ", at {}:{} in {}".format(*user[-1])
    if len(user) > 1:
        where += ", called from {}:{} in {}".format(*user[0])
    return exception + where


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def describe_traceback_text(text: str) -> str:
    """describe_failure for a traceback as text (Ray's error files, a remote worker's error): its last line, and
    the user's frames among every `File "...", line N, in fn` it holds. "" for an empty text."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if ", at " in lines[-1]:  # hpo's own message, which says where already
        return lines[-1]
    return describe_failure(lines[-1], [(f, int(n), fn) for f, n, fn in _FRAME.findall(text)])
