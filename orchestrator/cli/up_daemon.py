"""The daemon of `hpo up`: a warm session (ray_support/warm.py) that drives, in its own process, the runs that
`hpo run` and `hpo resume` hand it (ray_support/handoff.py), each through the same `main` a command runs.

Run as `python -m orchestrator.cli.up_daemon MODULE [NUM_CPUS]` by `hpo up` (ray_support/up.py)."""

from __future__ import annotations

import importlib
import os
import sys

from orchestrator.cli import main
from orchestrator.ray_support.handoff import forget_modules_under
from orchestrator.ray_support.warm import serve


def run_job(argv: list[str]) -> int:
    """`hpo ARGV` in this process; then the user's modules it imported are forgotten, so that the next run
    imports the code as it is then (a workload edited between two runs is the edited one)."""
    importlib.invalidate_caches()  # files added since the last run are found
    try:
        return main(argv, hand_off=False)
    finally:
        forget_modules_under(os.path.realpath(os.getcwd()))


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None, run_job=run_job)
