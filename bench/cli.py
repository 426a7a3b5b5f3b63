"""How fast `hpo` answers the commands a user runs by hand or in CI: `hpo validate`, `hpo schema`, `hpo --help`,
as whole processes (the installed `hpo` entry point), against a bare `python -c pass` measured in the same run
(the interpreter's own start, the floor). Also checks that none of them imports torch or Ray.

    python bench/cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.cli import HEAVY_LIBRARIES  # noqa: E402

HPO = str(Path(sys.executable).with_name("hpo"))
COMMANDS = {
    "hpo validate jobs/digits-asha.yaml": [HPO, "validate", "jobs/digits-asha.yaml"],
    "hpo schema": [HPO, "schema"],
    "hpo --help": [HPO, "--help"],
}


def wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy libraries `hpo ARGS` imports (from `python -X importtime`)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orchestrator.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    return sorted(loaded & set(HEAVY_LIBRARIES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    floor = wall([sys.executable, "-c", "pass"], args.runs)
    print(f"python -c pass (baseline): {floor:.3f}s (median of {args.runs})")
    for label, command in COMMANDS.items():
        t = wall(command, args.runs)
        heavy = heavy_imports(command[1:])
        print(
            f"{label:<36} {t:.3f}s  ({t / floor:.1f}x the bare interpreter; goal <= 0.3 s)  "
            f"heavy imports: {', '.join(heavy) or 'none'}"
        )


if __name__ == "__main__":
    main()
