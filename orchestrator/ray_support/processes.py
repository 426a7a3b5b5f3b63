"""Whether a process of this host still runs: one answer for the run lease's holder and `hpo up`'s daemon.

Without psutil, which the image does not install (every `hpo run` asks, through up.json, before importing
anything heavy)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs. A zombie does not: it has ended and will never act again."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it is there
