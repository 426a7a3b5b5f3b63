"""How one driver scales: many cheap trials, many reports. The `synthetic` workload (no training: a report is
a function value), random search, FIFO, whole processes: `hpo run --quiet` in a subprocess, Ray's start
included, against a bare Ray Tune script doing the same trials and reports in the same run (the baseline).

Printed for the hpo run: wall time; the driver's resident memory (sampled every 0.2 s) when the first trial
reported and at its peak; the cost per report in the first and the last 10% of the reports (the spread of their
timestamps divided by their count, times the run's `concurrency`), and their ratio; and how long
`hpo results show` takes on the finished run.

    python bench/scale.py [--trials 1000] [--iterations 1] [--concurrency 2] [--no-bare]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.results import load_results  # noqa: E402

BARE = """
import sys, time, math
import ray
from ray import tune
trials, iterations, concurrency = (int(a) for a in sys.argv[1:4])
ray.init(address="local", num_cpus=concurrency, include_dashboard=False, logging_level="ERROR")
def branin(u1, u2):
    x1, x2 = 15 * u1 - 5, 15 * u2
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10
def trainable(config):
    f = branin(config["x1"], config["x2"])
    for epoch in range(1, iterations + 1):
        tune.report({"train_loss": f, "val_loss": f + 1.0 / epoch, "epoch": epoch})
tuner = tune.Tuner(
    tune.with_resources(trainable, {"CPU": 1}),
    param_space={"x1": tune.uniform(0, 1), "x2": tune.uniform(0, 1)},
    tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=trials, reuse_actors=True,
        max_concurrent_trials=concurrency),
    run_config=tune.RunConfig(storage_path=sys.argv[4], name="bare", verbose=0),
)
tuner.fit()
"""


def spec_text(trials: int, iterations: int, concurrency: int, storage: str) -> str:
    return textwrap.dedent(
        f"""\
        name: scale
        workload: synthetic
        seed: 0
        storage: {storage}
        search:
          algorithm: random
          num_samples: {trials}
          max_concurrent: {concurrency}
          metric: val_loss
          mode: min
          space:
            x1: {{uniform: [0.0, 1.0]}}
            x2: {{uniform: [0.0, 1.0]}}
        train:
          max_epochs: {iterations}
          cpus_per_worker: 1
          max_retries: 0
        """
    )


def _sample_rss(proc: subprocess.Popen, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    handle = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            samples.append((time.time(), handle.memory_info().rss))
        except psutil.Error:
            return
        time.sleep(0.2)


def hpo_run(trials: int, iterations: int, concurrency: int, work: Path) -> dict:
    spec = work / "scale.yaml"
    spec.write_text(spec_text(trials, iterations, concurrency, str(work / "results")))
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = threading.Thread(target=_sample_rss, args=(proc, samples, stop), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - began
    stop.set()
    if proc.returncode != 0:
        raise SystemExit(f"hpo run failed ({proc.returncode}):\n{err[-3000:]}")
    uri = out.splitlines()[0].removeprefix("results_uri: ").strip()
    rows = load_results(uri)
    stamps = sorted(pc.cast(rows["timestamp"], pa.int64()).to_numpy() / 1000.0)
    n = len(stamps)
    tenth = max(2, n // 10)
    first = (stamps[tenth - 1] - stamps[0]) / (tenth - 1) * concurrency
    last = (stamps[-1] - stamps[-tenth]) / (tenth - 1) * concurrency
    # resident memory when the first trial reported (imports done, Ray and Tune up), and at its peak
    after = next((rss for t, rss in samples if t >= stamps[0]), samples[-1][1])
    peak = max(rss for _, rss in samples)
    # resident memory when a quarter, half, three quarters and all of the reports were in
    marks = [stamps[min(n - 1, n * q // 4)] for q in (1, 2, 3, 4)]
    along = [next((rss for t, rss in samples if t >= m), samples[-1][1]) / 2**20 for m in marks]
    t0 = time.perf_counter()
    show = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "results", "show", uri, "--top", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    show_s = time.perf_counter() - t0
    if show.returncode != 0:
        raise SystemExit(show.stderr)
    return {
        "wall": wall,
        "reports": n,
        "rss_after_start_mb": after / 2**20,
        "rss_peak_mb": peak / 2**20,
        "rss_along_mb": along,
        "per_report_first_ms": first * 1000,
        "per_report_last_ms": last * 1000,
        "show_s": show_s,
    }


def bare_run(trials: int, iterations: int, concurrency: int, work: Path) -> float:
    script = work / "bare.py"
    script.write_text(BARE)
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script), str(trials), str(iterations), str(concurrency), str(work / "bare")],
        capture_output=True,
        text=True,
        env=dict(os.environ, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_AIR_NEW_OUTPUT="0"),
    )
    if proc.returncode != 0:
        raise SystemExit(f"bare Ray Tune failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Ray Tune baseline")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpo-scale-"))
    size = f"{args.trials} trials x {args.iterations} iteration(s), {args.concurrency} at a time"
    bare = None if args.no_bare else bare_run(args.trials, args.iterations, args.concurrency, work)
    hpo = hpo_run(args.trials, args.iterations, args.concurrency, work)
    print(f"{size}, whole processes (Ray's start included)")
    print(f"hpo run        : {hpo['wall']:.1f}s, {hpo['reports']} reports")
    if bare is not None:
        print(f"bare Ray Tune  : {bare:.1f}s   ratio hpo/bare {hpo['wall'] / bare:.2f}")
    print(
        f"driver memory  : {hpo['rss_after_start_mb']:.0f} MB after start, peak {hpo['rss_peak_mb']:.0f} MB "
        f"(growth {hpo['rss_peak_mb'] - hpo['rss_after_start_mb']:.0f} MB); at 25/50/75/100% of the reports "
        + "/".join(f"{m:.0f}" for m in hpo["rss_along_mb"])
        + " MB"
    )
    print(
        f"per report     : first 10% {hpo['per_report_first_ms']:.2f} ms, last 10% "
        f"{hpo['per_report_last_ms']:.2f} ms, ratio last/first "
        f"{hpo['per_report_last_ms'] / max(hpo['per_report_first_ms'], 1e-9):.2f}"
    )
    print(f"results show   : {hpo['show_s']:.2f}s")


if __name__ == "__main__":
    main()
