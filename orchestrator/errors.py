"""Errors a user can act on. The CLI prints each as one line (exit 2): nothing was started or written."""


class RunError(RuntimeError):
    """The job cannot run as asked (e.g. on these resources); the message says what to change."""


class SanityFailed(RuntimeError):
    """`sanity: true` and a check failed: the search did not start (exit 1; sanity.parquet says why)."""
