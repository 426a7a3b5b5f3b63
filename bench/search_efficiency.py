"""Search efficiency, measured through `hpo run` on one embedded Ray:

1. ASHA vs FIFO, the same random configs (same seed), one trial at a time so "epochs spent" is well defined:
   epochs spent until some trial first reports the best validation value that the FIFO search finds
   (digits-mlp: val_accuracy; synthetic hartmann6: val_loss). Goal: ASHA >= 3x fewer.
2. TPE (hyperopt) and quasi-random vs random on the synthetic functions with known optima (Branin, Hartmann6):
   median regret (best found - global optimum) over 5 seeds at a fixed trial budget. Goal: lower than random.

    python bench/search_efficiency.py [--seeds 5] [--budget 40] [--asha-seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.ray_env import start_ray  # noqa: E402
from orchestrator.results import load_results  # noqa: E402
from orchestrator.runner import run  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.workloads.synthetic import OPTIMA  # noqa: E402

UNIT = {"uniform": [0.0, 1.0]}


def _run(root: str, **spec) -> list[dict]:
    summary = run(parse_spec({"name": "bench", "storage": root, **spec}), progress=lambda line: None)
    return sorted(load_results(summary.results_uri).to_pylist(), key=lambda r: r["timestamp"])


def epochs_to_target(rows: list[dict], metric: str, target: float, mode: str) -> int | None:
    """Epochs run (rows, in the order they were reported) until one reaches `target`; None if none does."""
    for spent, row in enumerate(rows, 1):
        if (row[metric] >= target) if mode == "max" else (row[metric] <= target):
            return spent
    return None


def asha_vs_fifo(root: str, seed: int, workload: str, space: dict, fixed: dict, metric: str, mode: str,
                 trials: int, epochs: int) -> dict:
    search = {"algorithm": "random", "num_samples": trials, "max_concurrent": 1, "metric": metric, "mode": mode,
              "space": space, "fixed": fixed}
    common = {"workload": workload, "seed": seed, "search": search, "train": {"max_epochs": epochs}}
    fifo = _run(root, **common, scheduler={"type": "fifo"})
    asha = _run(root, **common, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3})
    pick = max if mode == "max" else min
    target = pick(r[metric] for r in fifo)
    return {"target": target, "fifo": epochs_to_target(fifo, metric, target, mode), "fifo_total": len(fifo),
            "asha": epochs_to_target(asha, metric, target, mode), "asha_total": len(asha),
            "asha_best": pick(r[metric] for r in asha)}


def regret(root: str, algorithm: str, function: str, seed: int, budget: int) -> float:
    dims = 2 if function == "branin" else 6
    rows = _run(root, workload="synthetic", seed=seed, train={"max_epochs": 1},
                search={"algorithm": algorithm, "num_samples": budget, "max_concurrent": 1, "metric": "val_loss",
                        "mode": "min", "space": {f"x{i}": UNIT for i in range(1, dims + 1)},
                        "fixed": {"function": function}})
    return min(r["val_loss"] for r in rows) - 1.0 - OPTIMA[function]  # val_loss at epoch 1 = f + gap, gap >= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--asha-seeds", type=int, default=3)
    args = parser.parse_args()
    start_ray(num_cpus=2)
    root = tempfile.mkdtemp(prefix="hpo-bench-search-")

    print("1. ASHA vs FIFO, same random configs, 1 trial at a time: epochs to reach FIFO's best")
    digits = dict(workload="digits-mlp", metric="val_accuracy", mode="max", trials=27, epochs=27,
                  space={"lr": {"loguniform": [1e-4, 1e-1]}, "hidden": {"choice": [16, 32, 64, 128]},
                         "dropout": {"uniform": [0.0, 0.5]}}, fixed={"batch_size": 128})
    hartmann = dict(workload="synthetic", metric="val_loss", mode="min", trials=27, epochs=27,
                    space={f"x{i}": UNIT for i in range(1, 7)}, fixed={"function": "hartmann6"})
    for label, setup in (("digits-mlp", digits), ("synthetic hartmann6", hartmann)):
        ratios = []
        for seed in range(args.asha_seeds):
            r = asha_vs_fifo(root, seed, **setup)
            reached = r["asha"] is not None
            ratio = r["fifo"] / r["asha"] if reached else None
            ratios.append(ratio)
            print(f"  {label} seed {seed}: target {r['target']:.4f}; FIFO {r['fifo']} epochs (of {r['fifo_total']}),"
                  f" ASHA {r['asha'] if reached else 'never'} (of {r['asha_total']}, best {r['asha_best']:.4f})"
                  + (f"  -> {ratio:.2f}x fewer" if reached else ""))
        reached = [x for x in ratios if x is not None]
        total = [r for r in ratios]
        print(f"  {label}: ASHA reached the target in {len(reached)}/{len(total)} seeds; median ratio "
              f"{statistics.median(reached):.2f}x" if reached else f"  {label}: ASHA never reached the target")

    print(f"2. median regret over {args.seeds} seeds at {args.budget} trials (lower is better)")
    for function in ("branin", "hartmann6"):
        medians = {}
        for algorithm in ("random", "quasirandom", "hyperopt"):
            values = [regret(root, algorithm, function, seed, args.budget) for seed in range(args.seeds)]
            medians[algorithm] = statistics.median(values)
            print(f"  {function:9s} {algorithm:11s} median regret {medians[algorithm]:.4f}  "
                  f"(seeds: {', '.join(f'{v:.3f}' for v in values)})")
        for algorithm in ("quasirandom", "hyperopt"):
            print(f"  {function:9s} {algorithm} / random = {medians[algorithm] / medians['random']:.2f}")


if __name__ == "__main__":
    main()
