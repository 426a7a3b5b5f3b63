"""`hpo`: a thin command line over the library. Every command calls a function a user could call; this package
parses, calls, and prints. parser.py defines the commands; each command group's handlers live in one module
(spec_cmds, job_cmds, results_cmds, practice_cmds, cluster_cmds), imported when one of its commands runs."""

from __future__ import annotations

import importlib

from orchestrator.cli.common import run_command
from orchestrator.cli.parser import build_parser

__all__ = ["main", "build_parser", "HEAVY_LIBRARIES"]

# What `hpo validate`, `hpo schema` and `--help` never import (each costs ~70 ms to ~2 s to import): the command
# modules and the built-in workloads import them late. The entry-point test and bench/cli.py check this list.
HEAVY_LIBRARIES = ("ray", "torch", "numpy", "scipy", "sklearn", "hyperopt", "matplotlib", "boto3", "pyarrow")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        getattr(args, "help_of", parser).print_help()
        return 2
    module, _, function = args.handler.partition(":")
    # The command's module imports what it needs (Ray, torch, pyarrow) at its top: load it only now.
    handler = getattr(importlib.import_module(f"orchestrator.cli.{module}"), function)
    return run_command(handler, args)


if __name__ == "__main__":
    raise SystemExit(main())
