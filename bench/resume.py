"""Cost of crashes: a job killed k times at random moments and resumed each time with `hpo resume`, vs the same
job uninterrupted, in two scenarios:

- `driver`: the `hpo run` / `hpo resume` driver is SIGKILLed, the Ray cluster stays up (a crashed driver or a
  lost laptop connection; what Ray Tune's own restore test measures, allowing 1.5x). Both sides join one
  token-auth head started here (`--address`).
- `all`: the driver and every process it started are SIGKILLed, its embedded Ray included (a lost head node),
  so every resume also starts Ray again.

Goal: total wall time <= 1.3x uninterrupted. The per-kill cost in seconds is printed too: it does not grow
with the job, so the ratio depends on the job's length. The final tables are compared every time: every
deterministic column equal, every (trial, epoch) once.

    python bench/resume.py [--kills 2] [--trials 128] [--epochs 40] [--seed 0] [--scenario driver|all|both]
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
HPO = [sys.executable, "-m", "orchestrator.cli"]

from rayhead import RayHead  # noqa: E402  (the tests' token-auth head on free ports)

from orchestrator.results import RUN_VARYING_COLUMNS, load_results  # noqa: E402


def _start(args: list[str], cluster: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [*HPO, *args, *cluster, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        start_new_session=True,
    )


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


def measure(spec_path: Path, work: Path, args, cluster: list[str], env: dict) -> tuple:
    """(uninterrupted s, interrupted s, kill moments, tables identical, last exit code)."""
    began = time.monotonic()
    clean = _start(["run", str(spec_path), "--storage", str(work / "clean")], cluster, env)
    clean_uri = clean.stdout.readline().strip().removeprefix("results_uri: ")
    clean.wait()
    uninterrupted = time.monotonic() - began

    rng = random.Random(args.seed)
    began = time.monotonic()
    proc = _start(["run", str(spec_path)], cluster, env)
    uri = proc.stdout.readline().strip().removeprefix("results_uri: ")
    kills = []
    for _ in range(args.kills):
        delay = rng.uniform(0.2, 0.5) * uninterrupted
        try:
            proc.wait(timeout=delay)  # it may finish before the kill
        except subprocess.TimeoutExpired:
            _kill(proc)
            kills.append(round(delay, 1))
        proc = _start(["resume", uri], cluster, env)
    code = proc.wait()
    interrupted = time.monotonic() - began
    return uninterrupted, interrupted, kills, _rows(uri) == _rows(clean_uri), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--trials", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", choices=["driver", "all", "both"], default="both")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpo-bench-resume-"))
    spec = {
        "name": "bench-resume",
        "workload": "digits-mlp",
        "seed": 3,
        "storage": str(work / "runs"),
        "search": {
            "algorithm": "random",
            "num_samples": args.trials,
            "max_concurrent": 2,
            "metric": "val_loss",
            "space": {"lr": {"loguniform": [1e-3, 1e-1]}, "hidden": {"choice": [32, 64, 128]}},
            "fixed": {"batch_size": 64},
        },
        "train": {"max_epochs": args.epochs},
    }
    spec_path = work / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    print(f"{args.trials} trials x {args.epochs} epochs, max_concurrent 2, digits-mlp, {args.kills} kill(s)")
    for scenario in ["driver", "all"] if args.scenario == "both" else [args.scenario]:
        head = None
        cluster, env = [], {}
        if scenario == "driver":
            head = RayHead(work / scenario / "head", num_cpus=os.cpu_count() or 2)
            head.start()
            cluster, env = ["--address", f"127.0.0.1:{head.gcs_port}"], {"RAY_AUTH_TOKEN": head.token}
        try:
            plain, total, kills, same, code = measure(spec_path, work / scenario, args, cluster, env)
        finally:
            if head:
                head.stop()
        per_kill = (total - plain) / len(kills) if kills else 0.0
        print(
            f"  {scenario:>6}: uninterrupted {plain:.1f} s; killed {len(kills)} time(s) (after "
            f"{', '.join(map(str, kills))} s of each attempt) and resumed: {total:.1f} s in all (exit {code}); "
            f"ratio {total / plain:.2f} (goal <= 1.3); {per_kill:.1f} s per kill; tables identical: {same}"
        )


if __name__ == "__main__":
    main()
