"""Cost of crashes: a job killed k times at random moments (SIGKILL of `hpo run` / `hpo resume` and every
process they started), resumed each time, vs the same job uninterrupted. Both sides are `hpo` subprocesses,
so each includes its own Ray start-up, as a user's would. Goal: total wall time <= 1.3x uninterrupted.
The final tables are also compared: every deterministic column equal, every (trial, epoch) once.

    python bench/resume.py [--kills 2] [--trials 32] [--epochs 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HPO = [sys.executable, "-m", "orchestrator.cli"]

from orchestrator.results import RUN_VARYING_COLUMNS, load_results  # noqa: E402


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*HPO, *args, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _rows(uri: str) -> list[dict]:
    table = load_results(uri).sort_by([("trial_id", "ascending"), ("iteration", "ascending")])
    return table.drop_columns(list(RUN_VARYING_COLUMNS)).to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpo-bench-resume-"))
    spec = {"name": "bench-resume", "workload": "digits-mlp", "seed": 3, "storage": str(work / "runs"),
            "search": {"algorithm": "random", "num_samples": args.trials, "max_concurrent": 2, "metric": "val_loss",
                       "space": {"lr": {"loguniform": [1e-3, 1e-1]}, "hidden": {"choice": [32, 64, 128]}},
                       "fixed": {"batch_size": 64}},
            "train": {"max_epochs": args.epochs}}
    spec_path = work / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    began = time.monotonic()
    clean = _start(["run", str(spec_path), "--storage", str(work / "clean")])
    clean_uri = clean.stdout.readline().strip().removeprefix("results_uri: ")
    clean.wait()
    uninterrupted = time.monotonic() - began

    rng = random.Random(args.seed)
    began = time.monotonic()
    proc = _start(["run", str(spec_path)])
    uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
    kills = []
    for _ in range(args.kills):
        delay = rng.uniform(0.2, 0.5) * uninterrupted
        try:
            proc.wait(timeout=delay)  # it may finish before the kill
        except subprocess.TimeoutExpired:
            _kill(proc)
            kills.append(round(delay, 1))
        proc = _start(["resume", uri])
    code = proc.wait()
    interrupted = time.monotonic() - began

    same = _rows(uri) == _rows(clean_uri)
    print(f"{args.trials} trials x {args.epochs} epochs, max_concurrent 2, digits-mlp")
    print(f"  uninterrupted: {uninterrupted:.1f} s")
    print(f"  killed {len(kills)} time(s) (after {', '.join(map(str, kills))} s of each attempt), resumed each "
          f"time: {interrupted:.1f} s in all (last exit code {code})")
    print(f"  ratio {interrupted / uninterrupted:.2f} (goal <= 1.3); final tables identical: {same}")


if __name__ == "__main__":
    main()
