"""What training code raises to tell the run what happened, in a module of its own: the driver catches and tells
these apart without importing torch (train/context.py, which raises them, needs it)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A training function broke the contract (a report missing a declared metric, never reporting, ...)."""


class FinalTrialError(TrainingError):
    """A failure a retry would only repeat: the training code raised before its first report, or broke the
    report contract. The trial fails at once instead of being run again (a process, node or Ray failure is
    still retried). The message is the exception and where it was raised; the trial's log has the rest."""


class ReportError(FinalTrialError):
    """A report that breaks the workload's declaration (a declared metric missing, an undeclared one given, a
    value that is no number). Every trial runs the same code and would break it the same way, so the driver
    stops the whole job at the first one (stopping.py) instead of failing each trial in turn."""


class TrialDiskFull(FinalTrialError):
    """A trial could not store its checkpoint: the disk of the run's folder or spool is full. Every trial would
    meet the same full disk, so the driver stops the job (status `disk_full`, resumable once there is space)."""


class UnsafeCheckpoint(TrainingError):
    """A stored checkpoint that holds something besides data (an object whose unpickling would run code): it
    is refused, never loaded (train/checkpoints.py)."""


class TrialStopped(BaseException):
    """Raised by a report when the scheduler stopped the trial there (on every rank at the same report), so the
    training function ends and its worker takes the next trial. A BaseException, like SystemExit: a training
    loop's `except Exception` does not swallow it."""
