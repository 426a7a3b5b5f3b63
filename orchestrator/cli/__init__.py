"""`hpo`: a thin command line over the library. Every command calls a function a user could call."""

from __future__ import annotations

import argparse
import sys

from orchestrator.cli import _cluster, _jobs, _practice, _results
from orchestrator.cli._common import run_command

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        print(
            f"hpo: {message} (see hpo {self.prog.split(' ', 1)[-1] if ' ' in self.prog else ''} --help)".replace(
                "hpo  --help", "hpo --help"
            ),
            file=sys.stderr,
        )
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpo", description="Hyperparameter optimization jobs on Ray.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _jobs.register(commands)
    _results.register(commands)
    _practice.register(commands)
    _cluster.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_command(args.handler, args)


if __name__ == "__main__":
    raise SystemExit(main())
