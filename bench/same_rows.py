"""A refactoring's check: the same jobs, run by an earlier revision and by this tree, store the same rows.

    python bench/same_rows.py REV [--jobs demo,ddp]

Each job runs twice with `hpo run`: once from a git worktree of REV, once from this tree (same virtualenv, same
machine). Their results tables, and their trial tables, must be equal but for what a rerun varies by design
(timings, attempts, nodes, the ledger's figures: results/schema.py's RUN_VARYING_COLUMNS and
TRIAL_VARYING_COLUMNS; paths into the run are compared relative to it). The jobs: `demo`, the README's demo job (jobs/digits-asha.yaml) one trial at a time (its
ASHA decisions then depend on nothing but the seed) and 8 trials; `ddp`, 2-worker DDP trials of the same workload
(3 trials of 3 epochs, FIFO). Prints one line per job and table, and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.results import load_results, load_trials  # noqa: E402
from orchestrator.results.schema import RUN_VARYING_COLUMNS, TRIAL_VARYING_COLUMNS  # noqa: E402


def job_specs() -> dict[str, dict]:
    demo = yaml.safe_load((ROOT / "jobs" / "digits-asha.yaml").read_text())
    demo["search"].update(num_samples=8, max_concurrent=1)
    ddp = yaml.safe_load((ROOT / "jobs" / "digits-asha.yaml").read_text())
    ddp["name"] = "digits-ddp"
    ddp["search"].update(num_samples=3, max_concurrent=1)
    ddp["scheduler"] = {"type": "fifo"}
    ddp["train"].update(workers=2, max_epochs=3)
    return {"demo": demo, "ddp": ddp}


def run(tree: Path, spec: dict, storage: Path) -> str:
    """`hpo run` of `spec` from `tree`'s orchestrator package; the run's results URI."""
    path = storage / "job.yaml"
    storage.mkdir(parents=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(tree))
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--storage", str(storage / "results")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        sys.exit(f"hpo run from {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  ran from {tree.name}: {time.monotonic() - began:.0f} s", flush=True)
    return proc.stdout.strip().splitlines()[0].split()[-1]


def comparable(table, uri: str, drop: tuple[str, ...], keys: list[str]) -> list[dict]:
    """The rows of `table` sorted by `keys`, without the columns `drop`, each path into the run `uri` made
    relative to it (checkpoint links)."""
    table = table.drop_columns([c for c in drop if c in table.column_names])
    rows = table.sort_by([(k, "ascending") for k in keys]).to_pylist()
    return [{k: v.replace(uri, "<run>") if isinstance(v, str) else v for k, v in row.items()} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--jobs", default="demo,ddp", help="which jobs, comma-separated (demo, ddp)")
    args = parser.parse_args()
    specs = job_specs()
    differ = False
    with tempfile.TemporaryDirectory(prefix="same-rows-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), args.rev], check=True
        )
        try:
            for name in args.jobs.split(","):
                print(f"{name}: {args.rev} against this tree", flush=True)
                uris = [
                    run(tree, specs[name], Path(tmp) / name / label)
                    for tree, label in ((base, "base"), (ROOT, "head"))
                ]
                rows = [
                    comparable(load_results(u), u, RUN_VARYING_COLUMNS, ["trial_id", "iteration"])
                    for u in uris
                ]
                trials = [
                    comparable(load_trials(u), u, TRIAL_VARYING_COLUMNS + RUN_VARYING_COLUMNS, ["trial_id"])
                    for u in uris
                ]
                for what, (a, b) in (("rows", rows), ("trials", trials)):
                    same = a == b
                    differ |= not same
                    print(f"  {what}: {len(a)} and {len(b)}, {'equal' if same else 'DIFFERENT'}", flush=True)
                    for x, y in zip(a, b, strict=False):
                        if x != y:
                            keys = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
                            print(f"    first difference: {[(k, x.get(k), y.get(k)) for k in keys]}")
                            break
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
