"""`hpo`: a thin command line over the library. Every command calls a function a user could call; this package
parses, calls, and prints. parser.py defines the commands; each command group's handlers live in one module
(spec_cmds, job_cmds, results_cmds, practice_cmds, cluster_cmds), imported when one of its commands runs."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

from orchestrator.cli.parser import NODE, build_parser

__all__ = ["main", "entry", "build_parser", "HEAVY_LIBRARIES"]

# What `hpo validate`, `hpo schema` and `--help` never import (each costs ~70 ms to ~2 s to import): the command
# modules and the built-in workloads import them late. The entry-point test and bench/cli.py check this list.
HEAVY_LIBRARIES = ("ray", "torch", "numpy", "scipy", "sklearn", "hyperopt", "matplotlib", "boto3", "pyarrow")


# The commands that a warm session of `hpo up` drives for them when it serves this directory (ray_support/handoff.py)
HANDED_OFF = ("job_cmds:run", "job_cmds:resume")


def main(argv: list[str] | None = None, *, hand_off: bool = True) -> int:
    """`hpo ARGV`; returns the exit code. `hand_off`: `hpo run` and `hpo resume` with no --address are driven by
    the warm session of `hpo up` if one is up for this directory and takes them (False: in that daemon)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [NODE]:  # everything after it is `ray start`'s, which argparse cannot pass on whole
        from orchestrator.cli.cluster_cmds import node

        return node(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        getattr(args, "help_of", parser).print_help()
        return 2
    if hand_off and args.handler in HANDED_OFF and not args.address:
        code = _hand_off(argv, quiet=args.quiet)
        if code is not None:
            return code
    from orchestrator.cli.common import run_command  # the spec's model: after a hand-off, which needs none

    module, _, function = args.handler.partition(":")
    # The command's module imports what it needs (Ray, torch, pyarrow) at its top: load it only now.
    handler = getattr(importlib.import_module(f"orchestrator.cli.{module}"), function)
    return run_command(handler, args)


def _hand_off(argv: list[str], *, quiet: bool) -> int | None:
    """The run's exit code, if `hpo up`'s daemon drove it; None if none is up here or it did not take the run."""
    from orchestrator.ray_support import handoff, up  # light: no Ray

    session = up.UpSession.read()
    if session is None or not session.serves(os.getcwd()):
        return None  # the run says so itself (execution/runner.py, warm.joinable) if one is up elsewhere
    socket_path = up.home() / handoff.SOCKET_FILE
    if not socket_path.exists():
        return None
    say = (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    return handoff.hand_off(str(socket_path), argv, say)


def entry() -> None:
    """The `hpo` executable: main(), then the process ends as soon as its work is done. It owns its process: a
    second Ctrl-C during a run ends it at once (stopping.py)."""
    from orchestrator.stopping import SecondSignal  # light: no Ray, no torch

    SecondSignal.exits = True
    end_process(main())


def end_process(code: int, *, exit_now=os._exit, run_exit_handlers=atexit._run_exitfuncs) -> None:
    """End the process with `code`: the atexit handlers, stdout and stderr flushed, then os._exit.

    Why: after an `hpo run` returns, Python's own teardown (freeing every module and object; Ray's, gRPC's and
    Arrow's native libraries with them) takes ~0.65 s here, with nothing left to do. A live non-daemon thread
    still has work that Python's exit would wait for, so then the exit is Python's own.
    `atexit._run_exitfuncs` is CPython's: it runs the handlers as the interpreter's exit would (Ray's,
    logging's, multiprocessing's, weakref finalizers)."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        raise SystemExit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`hpo results show | head`) or stream: as Python does
            code = code or 120
    exit_now(code)


if __name__ == "__main__":
    entry()
