"""Whether a process of this host still runs: one answer for the run lease's holder and `hpo up`'s daemon; and
removing a folder that ending processes may still write in.

Without psutil, which the image does not install (every `hpo run` asks, through up.json, before importing
anything heavy)."""

from __future__ import annotations

import os
import shutil
import time


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


def remove_folder(path: str, timeout_s: float = 10.0) -> None:
    """Remove the folder `path`, again while something still creates files in it, for up to `timeout_s`. Ray's
    session folder after a shutdown: a process of the session that is ending (a worker, an
    agent) can open a log file in it while the removal walks it, which then fails on a folder no longer empty
    (seen once: `hpo down` reported the session stopped, and its folder was still there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path) or time.monotonic() > deadline:
            return
        time.sleep(0.1)
