"""Overhead of `hpo run` over a bare Ray Tune script doing the same training, measured in one process.

Both paths train the same digits MLP, the same 16 configs, the same epochs, reporting and checkpointing every
epoch, at the same concurrency with reused actors, on one embedded Ray started once (its start-up is
excluded from both). Paths alternate over several rounds and the medians are compared. Also measured: each
trial's start cost in a 6-trial, 1-epoch job of 1-worker and of 2-worker (DDP) trials, from the driver seeing
the trial start to its first report minus the epoch: the first trial's start (a new actor, a new worker group)
is the baseline of the later ones (a reused actor, a warm group).

    python bench/overhead.py [--trials 16] [--epochs 10] [--rounds 3] [--starts-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from ray import tune  # noqa: E402

from orchestrator.api import run  # noqa: E402
from orchestrator.ray_support.driver import DriverSession  # noqa: E402
from orchestrator.results import load_results  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.workloads.digits import build_mlp, load_digits_splits  # noqa: E402


def bare_trainable(config):
    """What a careful user writes with bare Ray Tune: seeded torch loop, report + checkpoint every epoch."""
    torch.manual_seed(config["seed"])
    torch.set_num_threads(1)
    splits = load_digits_splits(config)
    (x, y), (xv, yv) = splits.train, splits.val
    model = build_mlp(config)
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), config["batch_size"]):
            idx = order[start : start + config["batch_size"]]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(model(xv), yv))
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, os.path.join(tmp, "c.pt"))
            tune.report(
                {"val_loss": val_loss, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(tmp)
            )


def bare_run(configs: list[dict], epochs: int, concurrency: int, storage: str) -> float:
    from ray.tune.search import BasicVariantGenerator

    began = time.perf_counter()
    space = {"idx": tune.grid_search(list(range(len(configs))))}
    by_idx = {i: c for i, c in enumerate(configs)}

    def trainable(config):
        bare_trainable({**by_idx[config["idx"]], "epochs": epochs, "seed": config["idx"]})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            reuse_actors=True,
            search_alg=BasicVariantGenerator(max_concurrent=concurrency),
        ),
        run_config=tune.RunConfig(
            storage_path=storage,
            name="bare",
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    tuner.fit()
    return time.perf_counter() - began


def spec_for(trials: int, epochs: int, concurrency: int, storage: str, workers: int = 1):
    return parse_spec(
        {
            "name": "bench",
            "workload": "digits-mlp",
            "seed": 0,
            "storage": storage,
            "search": {
                "algorithm": "random",
                "num_samples": trials,
                "max_concurrent": concurrency,
                "space": {"lr": {"loguniform": [1e-3, 1e-1]}, "hidden": {"choice": [32, 64, 128]}},
                "fixed": {"batch_size": 64, "depth": 2, "dropout": 0.1},
            },
            "train": {
                "max_epochs": epochs,
                "workers": workers,
                "cpus_per_worker": 1 if workers == 1 else 0.5,
            },
        }
    )


def hpo_run(spec) -> tuple[float, list[dict]]:
    began = time.perf_counter()
    summary = run(spec, progress=lambda line: None)
    wall = time.perf_counter() - began
    rows = load_results(summary.results_uri)
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--starts-only", action="store_true", help="only the per-trial start costs")
    args = parser.parse_args()
    # the settings hpo runs under, for every path measured; Ray stopped after
    with DriverSession() as session:
        session.start_ray(num_cpus=max(4, os.cpu_count() or 1))
        _measure(args)


def _measure(args) -> None:
    storage = tempfile.mkdtemp(prefix="hpo-bench-")
    if args.starts_only:
        for workers in (1, 2):
            trial_starts(storage, workers, trials=6)
        return
    spec = spec_for(args.trials, args.epochs, args.concurrency, storage)
    # The bare script trains the very configs hpo drew, so both do the same work.
    _, rows = hpo_run(spec)  # warm-up (imports, dataset cache on workers)
    configs = {}
    for r in rows.to_pylist():
        configs[r["trial_id"]] = {
            "lr": r["config/lr"],
            "hidden": r["config/hidden"],
            "depth": 2,
            "dropout": 0.1,
            "batch_size": 64,
        }
    configs = [configs[k] for k in sorted(configs)]
    bare_run(configs, args.epochs, args.concurrency, storage)  # warm-up
    hpo_times, bare_times = [], []
    for _ in range(args.rounds):
        hpo_times.append(hpo_run(spec)[0])
        bare_times.append(bare_run(configs, args.epochs, args.concurrency, storage))
    hpo_med, bare_med = statistics.median(hpo_times), statistics.median(bare_times)
    print(f"trials={args.trials} epochs={args.epochs} concurrency={args.concurrency} rounds={args.rounds}")
    print(f"bare Ray Tune : median {bare_med:.2f}s  runs {[round(t, 2) for t in bare_times]}")
    print(f"hpo run       : median {hpo_med:.2f}s  runs {[round(t, 2) for t in hpo_times]}")
    print(f"ratio hpo/bare: {hpo_med / bare_med:.3f}  (goal <= 1.05)")
    for workers in (1, 2):
        trial_starts(storage, workers, trials=6)


def trial_starts(storage: str, workers: int, trials: int) -> list[float]:
    """Each trial's start cost in a `trials`-trial, 1-epoch job, one trial at a time: from the driver seeing the
    trial start to its first report, minus the epoch itself. The first trial's is the cold start (a new actor;
    for DDP, a new worker group); each later one's is what a warm actor or group costs."""
    stamps: dict[str, list[float]] = {}

    def progress(line: str) -> None:
        parts = line.split()
        if len(parts) > 2 and parts[1].startswith("trial_") and parts[2] in ("started", "epoch"):
            stamps.setdefault(parts[1], []).append(time.perf_counter())

    spec = spec_for(trials, 1, 1, storage, workers=workers)
    began = time.perf_counter()
    summary = run(spec, progress=progress)
    wall = time.perf_counter() - began
    rows = {r["trial_id"]: r for r in load_results(summary.results_uri).to_pylist()}
    names = sorted(stamps)
    costs = [stamps[t][1] - stamps[t][0] - rows[t]["epoch_time_s"] for t in names]
    # the whole gap a trial adds: from the previous trial's report to its own, minus its epoch
    gaps = [
        stamps[b][1] - stamps[a][1] - rows[b]["epoch_time_s"] for a, b in zip(names, names[1:], strict=False)
    ]
    warm = statistics.median(costs[1:])
    print(
        f"start cost, {workers}-worker trials ({trials} x 1 epoch, {wall:.1f}s in all): first {costs[0]:.2f}s, "
        f"later median {warm:.3f}s (max {max(costs[1:]):.3f}s), ratio later/first {warm / costs[0]:.4f}; "
        f"report to next trial's report, minus its epoch: median {statistics.median(gaps):.3f}s"
    )
    return costs


if __name__ == "__main__":
    main()
