"""Why a run ends before its search is done, and how the run winds down: one object the signal handlers, the
tracker, the search's gate and Tune's stopper all read.

A run that is stopped is not finished: `hpo resume` must be able to continue it. So a stop never kills work it
cannot redo. Once one is requested:
- the search starts no new trial (fast_forward.py's gate is closed);
- each running trial stops at its next report (Tune's Stopper: its rows and its checkpoint are stored by then)
  and its record says `interrupted`, not completed; a trial still silent when the grace period ends is ended
  then, its process killed at once (ray_compat.silent_trials_ended_at_once; it continues from its latest
  checkpoint on resume, as after a SIGKILL);
- the rows and trial table are written, run.json says why the run ended, and the summary names the resume.

The reasons, each run.json's status:
- `interrupted`: SIGINT (Ctrl-C) or SIGTERM (Kubernetes, Slurm, a `kill`); the CLI exits 128 + the signal.
- `stopped`: SIGTERM to a job submitted with `hpo submit` (only the Jobs API's stop, `hpo stop` or `ray job
  stop`, sends that; submit.py gives Ray's job supervisor the grace period plus time to write, before its
  SIGKILL).
- `failed`: a report broke the workload's declaration (train/context.py's ReportError); every trial would
  repeat it, so the job stops at the first.
- `disk_full`: a local disk the run writes to (its folder, its spool) has no space left; every trial would
  meet it, so the job stops, writes what it holds into the room its DiskReserve kept, and exits 3.
A second signal stops at once. In the `hpo` executable, which owns its process, as a SIGKILL would (see
DriverSession.catch_stops): still resumable. In a library caller's process (a notebook's kernel) it raises
KeyboardInterrupt into the run instead, which ends the trials, writes what it has (status interrupted) and
returns the process to the caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

INTERRUPTED, STOPPED, FAILED, DISK_FULL = "interrupted", "stopped", "failed", "disk_full"
# run.json's statuses: running while the driver lives, then one of the others (finished is the only one
# `hpo resume` refuses: there is nothing left to run).
RUN_STATUSES = ("running", "finished", INTERRUPTED, STOPPED, FAILED, DISK_FULL, "budget_exhausted")
GRACE_ENV = "HPO_STOP_GRACE_S"
DEFAULT_GRACE_S = 20.0
SUBMITTED_ENV = "HPO_SUBMITTED"  # set by `hpo submit` in the job's environment


class SecondSignal:
    """What a second signal does: `exits` is set by the `hpo` executable (cli.entry), the owner of its process."""

    exits = False


def stop_grace_s() -> float:
    """How long running trials get to reach their next report after a stop (HPO_STOP_GRACE_S, default 20 s:
    inside Kubernetes' default 30 s termination grace, with time left to write the tables)."""
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def exit_code_for(signal_number: int | None) -> int:
    """The shell's convention: 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signal_number if signal_number else 1


class StopRequest:
    """Set once, by whoever sees a reason first; read by the tracker, the search gate and Tune's stopper."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.reason: str | None = None
        self.signal: int | None = None  # the signal that asked for it, if one did
        self.message: str | None = None  # what to tell the user (a failed report's line)
        self.deadline = float("inf")
        self.announced = False  # the tracker has printed the line that says so

    def __bool__(self) -> bool:
        return self.reason is not None

    def request(
        self, reason: str, *, signal: int | None = None, message: str | None = None, grace_s: float
    ) -> bool:
        """Ask the run to stop; False if it was asked already (the first reason stands)."""
        if self.reason is not None:
            return False
        self.reason, self.signal, self.message = reason, signal, message
        self.deadline = self._clock() + grace_s
        return True

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())

    def overdue(self) -> bool:
        """The grace period is over: whatever still runs is ended now."""
        return self._clock() >= self.deadline

    def __getstate__(self):
        # Tune pickles its config (tuner.pkl) with our gate and stopper: the live request stays in the driver
        return {}

    def __setstate__(self, state):
        self.__init__()
