"""What every command shares: turning library errors into one-line messages and exit codes."""

from __future__ import annotations

import sys

from orchestrator.errors import RunError, SanityFailed
from orchestrator.results import CONFIG_PREFIX, ResultsNotFound
from orchestrator.spec import EnsembleSpec, JobSpec, SpecError, load_spec
from orchestrator.storage import StoreError

EXIT_FAILED = 1  # the job ran and failed
EXIT_USAGE = 2  # bad input: nothing was started
EXIT_UNSYNCED = 3  # the job ran, but storage was unreachable at the end: results wait in the local spool


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def read_spec(path: str) -> JobSpec | EnsembleSpec:
    try:
        return load_spec(path)
    except SpecError as exc:
        raise CliError(f"Invalid job spec {path}: {exc}") from None


def read_tune_spec(path: str, command: str) -> JobSpec:
    spec = read_spec(path)
    if not isinstance(spec, JobSpec):
        raise CliError(f"{path}: hpo {command} needs a tuning spec, not kind: {spec.kind}")
    return spec


def run_command(handler, args) -> int:
    try:
        return handler(args) or 0
    except CliError as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        return exc.code
    except SanityFailed as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ResultsNotFound, RunError, StoreError) as exc:
        print(f"hpo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(columns: list[str], rows: list[dict]) -> None:
    """Columns padded to their widest cell; `config/` prefixes dropped from headers."""
    headers = [c.removeprefix(CONFIG_PREFIX) for c in columns]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def add_output(parser, what: str = "one JSON object") -> None:
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help=f"json: the last line of stdout is {what}"
    )


def add_ray_options(parser) -> None:
    """The options of commands that run a job: hpo run and hpo resume."""
    add_output(parser, "the summary as one JSON object")
    parser.add_argument("--address", help="join this Ray cluster instead of starting an embedded one")
    parser.add_argument(
        "--num-cpus", type=float, help="logical CPUs for the embedded Ray (default: enough for the job)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")


def progress_printer(args):
    """Progress lines to stderr, unless --quiet."""

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    return progress
