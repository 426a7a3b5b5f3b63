"""What every command shares: reading a spec, turning library errors into one-line messages and exit codes,
and progress lines. Light: `hpo validate` loads it."""

from __future__ import annotations

import sys

from orchestrator.errors import (
    ResultsNotFound,
    RunError,
    SanityFailed,
    SpecError,
    WorkingDirGone,
    WorkloadCodeFailed,
)
from orchestrator.spec import EnsembleSpec, JobSpec, load_spec
from orchestrator.storage import StoreError
from orchestrator.storage.base import command_deadline

EXIT_FAILED = 1  # the job ran and failed
EXIT_USAGE = 2  # bad input: nothing was started
EXIT_UNSYNCED = 3  # the job ran, but storage was unreachable at the end: results wait in the local spool


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def read_spec(path: str) -> JobSpec | EnsembleSpec:
    try:
        return load_spec(path)
    except SpecError as exc:
        raise CliError(f"Invalid job spec {path}: {exc}") from None


def read_tune_spec(path: str, command: str) -> JobSpec:
    spec = read_spec(path)
    if not isinstance(spec, JobSpec):
        raise CliError(f"{path}: hpo {command} needs a tuning spec, not kind: {spec.kind}")
    return spec


def run_command(handler, args) -> int:
    try:
        if getattr(args, "bounded_storage", False):  # a command that only reads or copies stored runs
            with command_deadline():
                return handler(args) or 0
        return handler(args) or 0
    except CliError as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        return exc.code
    except (SanityFailed, WorkloadCodeFailed, WorkingDirGone) as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (SpecError, ResultsNotFound, RunError, StoreError) as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hpo results show | head`: the reader has what it wanted
        _stdout_to_devnull()  # so that the exit's flush of what is left does not fail again
        return 0


def _stdout_to_devnull() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind stdout: nothing to redirect
        pass
