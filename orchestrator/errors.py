"""Errors a user can act on. The CLI prints each as one line (exit 2): nothing was started or written."""


class RunError(RuntimeError):
    """The job cannot run as asked (e.g. on these resources); the message says what to change."""
