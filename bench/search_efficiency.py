"""Search efficiency, measured through `hpo run` on one embedded Ray:

1. ASHA vs FIFO, the same random configs (same seed), one trial at a time so "epochs spent" is well defined:
   epochs spent until some trial first reports the best validation value that the FIFO search finds
   (digits-mlp: val_accuracy; synthetic hartmann6: val_loss). Goal: ASHA >= 3x fewer. Two targets: "strict",
   the best value of any (trial, epoch) of the FIFO search, and "final", the best value a FIFO trial ended
   its full budget with.
2. TPE (hyperopt) and quasi-random vs random on the synthetic functions with known optima (Branin, Hartmann6):
   median regret (best found - global optimum) over 5 seeds at a fixed trial budget. Goal: lower than random.
3. Several objectives, on the synthetic ZDT1 (two objectives, known front): median hypervolume over 5 seeds
   at a fixed trial budget, NSGA-II and MOTPE against random (higher is better); then MO-ASHA against FIFO on
   the same random configs (27 trials x 9 epochs): the hypervolume each reaches and the epochs it spends.
4. Warm starts: Optuna's TPE on Branin warm-started from an earlier run of 20 trials (another seed) against a
   cold TPE: median regret after the budget, over 5 seeds.
5. PBT against ASHA and random (FIFO) on the anneal workload, whose best step size falls during training:
   the loss the best trial ends with (its last epoch), median over 5 seeds. Random and PBT train 8 trials x 12
   epochs (96 epochs); ASHA draws 24 trials and spends what it spends (printed).

    python bench/search_efficiency.py [--seeds 5] [--budget 40] [--asha-seeds 3] [--only PART]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.api import run  # noqa: E402
from orchestrator.ray_support.driver import DriverSession  # noqa: E402
from orchestrator.results import load_results, load_trials  # noqa: E402
from orchestrator.results.schema import trial_point  # noqa: E402
from orchestrator.search.objectives import Objective, hypervolume  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.workloads.synthetic import OPTIMA  # noqa: E402

UNIT = {"uniform": [0.0, 1.0]}


def _summary(root: str, **spec):
    """A run of the bench job `spec` under `root`, quietly; its summary."""
    return run(parse_spec({"name": "bench", "storage": root, **spec}), progress=lambda line: None)


def _run(root: str, **spec) -> list[dict]:
    summary = _summary(root, **spec)
    return sorted(load_results(summary.results_uri).to_pylist(), key=lambda r: r["timestamp"])


def epochs_to_target(rows: list[dict], metric: str, target: float, mode: str) -> int | None:
    """Epochs run (rows, in the order they were reported) until one reaches `target`; None if none does."""
    for spent, row in enumerate(rows, 1):
        if (row[metric] >= target) if mode == "max" else (row[metric] <= target):
            return spent
    return None


def asha_vs_fifo(
    root: str,
    seed: int,
    workload: str,
    space: dict,
    fixed: dict,
    metric: str,
    mode: str,
    trials: int,
    epochs: int,
) -> dict:
    search = {
        "algorithm": "random",
        "num_samples": trials,
        "max_concurrent": 1,
        "metric": metric,
        "mode": mode,
        "space": space,
        "fixed": fixed,
    }
    common = {"workload": workload, "seed": seed, "search": search, "train": {"max_epochs": epochs}}
    fifo = _run(root, **common, scheduler={"type": "fifo"})
    asha = _run(root, **common, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3})
    pick = max if mode == "max" else min
    last = {}
    for r in fifo:
        last[r["trial_id"]] = r[metric]
    out = {"fifo_total": len(fifo), "asha_total": len(asha), "asha_best": pick(r[metric] for r in asha)}
    # strict: the best value any (trial, epoch) of the FIFO search reported (its best checkpoint);
    # final: the best value a FIFO trial ended with after its full budget
    for name, target in (("strict", pick(r[metric] for r in fifo)), ("final", pick(last.values()))):
        out[name] = (
            target,
            epochs_to_target(fifo, metric, target, mode),
            epochs_to_target(asha, metric, target, mode),
        )
    return out


def regret(root: str, algorithm: str, function: str, seed: int, budget: int) -> float:
    dims = 2 if function == "branin" else 6
    rows = _run(
        root,
        workload="synthetic",
        seed=seed,
        train={"max_epochs": 1},
        search={
            "algorithm": algorithm,
            "num_samples": budget,
            "max_concurrent": 1,
            "metric": "train_loss",
            "mode": "min",
            "space": {f"x{i}": UNIT for i in range(1, dims + 1)},
            "fixed": {"function": function},
        },
    )
    return (
        min(r["train_loss"] for r in rows) - OPTIMA[function]
    )  # the synthetic workload's train_loss is f(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--asha-seeds", type=int, default=3)
    parser.add_argument(
        "--only", choices=("asha", "regret", "objectives", "warm", "pbt"), help="run one of the parts"
    )
    args = parser.parse_args()
    # the settings hpo runs under, for every path measured; Ray stopped after
    with DriverSession() as session:
        session.start_ray(num_cpus=2)
        _measure(args)


def _measure(args) -> None:
    root = tempfile.mkdtemp(prefix="hpo-bench-search-")

    if args.only in (None, "asha"):
        compare_schedulers(root, args.asha_seeds)
    if args.only in (None, "regret"):
        compare_searchers(root, args.seeds, args.budget)
    if args.only in (None, "objectives"):
        compare_multi_objective(root, args.seeds, args.budget)
    if args.only in (None, "warm"):
        compare_warm_starts(root, args.seeds, args.budget // 2)
    if args.only in (None, "pbt"):
        compare_pbt(root, args.seeds)


def compare_schedulers(root: str, seeds: int) -> None:
    print("1. ASHA vs FIFO, same random configs, 1 trial at a time: epochs to reach FIFO's best")
    digits = dict(
        workload="digits-mlp",
        metric="val_accuracy",
        mode="max",
        trials=27,
        epochs=27,
        space={
            "lr": {"loguniform": [1e-4, 1e-1]},
            "hidden": {"choice": [16, 32, 64, 128]},
            "dropout": {"uniform": [0.0, 0.5]},
        },
        fixed={"batch_size": 128},
    )
    hartmann = dict(
        workload="synthetic",
        metric="val_loss",
        mode="min",
        trials=27,
        epochs=27,
        space={f"x{i}": UNIT for i in range(1, 7)},
        fixed={"function": "hartmann6"},
    )
    for label, setup in (("digits-mlp", digits), ("synthetic hartmann6", hartmann)):
        ratios = {"strict": [], "final": []}
        for seed in range(seeds):
            r = asha_vs_fifo(root, seed, **setup)
            print(
                f"  {label} seed {seed}: FIFO ran {r['fifo_total']} epochs, ASHA {r['asha_total']} "
                f"(ASHA's best {r['asha_best']:.4f})"
            )
            for kind in ("strict", "final"):
                target, fifo, asha = r[kind]
                ratios[kind].append(fifo / asha if asha else None)
                print(
                    f"    {kind:6s} target {target:.4f}: FIFO reached it after {fifo} epochs, ASHA "
                    + (f"after {asha}  -> {fifo / asha:.2f}x fewer" if asha else "never")
                )
        for kind, values in ratios.items():
            reached = [x for x in values if x is not None]
            print(
                f"  {label} {kind}: ASHA reached the target in {len(reached)}/{len(values)} seeds"
                + (f"; median ratio where reached {statistics.median(reached):.2f}x" if reached else "")
            )


def compare_searchers(root: str, seeds: int, budget: int) -> None:
    print(f"2. median regret over {seeds} seeds at {budget} trials (lower is better)")
    for function in ("branin", "hartmann6"):
        medians = {}
        for algorithm in ("random", "quasirandom", "hyperopt"):
            values = [regret(root, algorithm, function, seed, budget) for seed in range(seeds)]
            medians[algorithm] = statistics.median(values)
            print(
                f"  {function:9s} {algorithm:11s} median regret {medians[algorithm]:.4f}  "
                f"(seeds: {', '.join(f'{v:.3f}' for v in values)})"
            )
        for algorithm in ("quasirandom", "hyperopt"):
            print(f"  {function:9s} {algorithm} / random = {medians[algorithm] / medians['random']:.2f}")


ZDT1_REFERENCE = (1.1, 22.0)  # f1 <= 1; val_loss after 1 epoch is 2 x f2 <= 2 x 10


def zdt1_hypervolume(root: str, algorithm: str, seed: int, budget: int, *, epochs=1, scheduler=None) -> tuple:
    """(hypervolume of the finished trials' front, epochs spent) of a ZDT1 search."""
    summary = _summary(
        root,
        workload="synthetic",
        seed=seed,
        train={"max_epochs": epochs},
        scheduler=scheduler or {"type": "fifo"},
        search={
            "algorithm": algorithm,
            "num_samples": budget,
            "max_concurrent": 1,
            "metric": ["train_loss", "val_loss"],
            "mode": ["min", "min"],
            "space": {f"x{i}": UNIT for i in range(1, 7)},
            "fixed": {"function": "zdt1"},
        },
    )
    trials = load_trials(summary.results_uri).to_pylist()
    objectives = (Objective("train_loss", "min"), Objective("val_loss", "min"))
    points = [point for t in trials if (point := trial_point(t, objectives)) is not None]
    return hypervolume(points, ZDT1_REFERENCE), sum(t["iterations"] for t in trials)


def compare_multi_objective(root: str, seeds: int, budget: int) -> None:
    print(
        f"3. several objectives (ZDT1): median hypervolume over {seeds} seeds at {budget} trials (higher is better)"
    )
    medians = {}
    for algorithm in ("random", "nsga2", "motpe"):
        values = [zdt1_hypervolume(root, algorithm, seed, budget)[0] for seed in range(seeds)]
        medians[algorithm] = statistics.median(values)
        print(
            f"  {algorithm:7s} median hypervolume {medians[algorithm]:.3f}  "
            f"(seeds: {', '.join(f'{v:.3f}' for v in values)})"
        )
    for algorithm in ("nsga2", "motpe"):
        print(f"  {algorithm} / random = {medians[algorithm] / medians['random']:.3f}")
    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
    fifo_runs = [zdt1_hypervolume(root, "random", seed, 27, epochs=9) for seed in range(seeds)]
    asha_runs = [
        zdt1_hypervolume(root, "random", seed, 27, epochs=9, scheduler=asha) for seed in range(seeds)
    ]
    for label, runs in (("FIFO", fifo_runs), ("MO-ASHA", asha_runs)):
        print(
            f"  random 27 x 9 epochs, {label:7s}: median hypervolume {statistics.median(r[0] for r in runs):.3f}, "
            f"median epochs {statistics.median(r[1] for r in runs):.0f}"
        )


def compare_warm_starts(root: str, seeds: int, budget: int) -> None:
    print(f"4. warm starts (Optuna TPE, Branin): median regret over {seeds} seeds after {budget} trials")

    def tpe(seed: int, warm: list[str]):
        summary = _summary(
            root,
            workload="synthetic",
            seed=seed,
            train={"max_epochs": 1},
            search={
                "algorithm": "tpe",
                "num_samples": budget,
                "max_concurrent": 1,
                "metric": "train_loss",
                "mode": "min",
                "space": {"x1": UNIT, "x2": UNIT},
                "fixed": {"function": "branin"},
                "warm_start": warm,
            },
        )
        return summary.results_uri, summary.best["metric"] - OPTIMA["branin"]

    cold, warm = [], []
    for seed in range(seeds):
        earlier, _ = tpe(1000 + seed, [])
        cold.append(tpe(seed, [])[1])
        warm.append(tpe(seed, [earlier])[1])
    for label, values in (("cold", cold), ("warm", warm)):
        print(
            f"  {label}: median regret {statistics.median(values):.4f}  (seeds: {', '.join(f'{v:.4f}' for v in values)})"
        )
    print(f"  warm / cold = {statistics.median(warm) / statistics.median(cold):.2f}")


def final_loss(root: str, seed: int, scheduler: dict, num_samples: int) -> tuple[float, int]:
    """The loss the best trial ends with at train.max_epochs (trials ASHA stopped never end there), and the
    epochs the search spent."""
    summary = _summary(
        root,
        workload="anneal",
        seed=seed,
        train={"max_epochs": 12},
        scheduler=scheduler,
        search={
            "algorithm": "random",
            "num_samples": num_samples,
            "max_concurrent": 2,
            "metric": "loss",
            "mode": "min",
            "space": {"lr": {"loguniform": [1.0e-3, 0.5]}},
            "fixed": {"noise": 0.5},
        },
    )
    rows = load_results(summary.results_uri).to_pylist()
    return min(r["loss"] for r in rows if r["iteration"] == 12), len(rows)


def compare_pbt(root: str, seeds: int) -> None:
    print(f"5. PBT vs ASHA vs random on anneal: the best trial's final loss, median over {seeds} seeds")
    methods = {
        "random": ({"type": "fifo"}, 8),
        "asha": ({"type": "asha", "grace_period": 1, "reduction_factor": 3}, 24),
        "pbt": (
            {"type": "pbt", "perturbation_interval": 3, "quantile": 0.25, "resample_probability": 0.25},
            8,
        ),
    }
    results = {
        name: [final_loss(root, seed, sched, n) for seed in range(seeds)]
        for name, (sched, n) in methods.items()
    }
    for name, values in results.items():
        losses = [v[0] for v in values]
        print(
            f"  {name}: median final loss {statistics.median(losses):.5f}, epochs {statistics.median(v[1] for v in values):.0f}"
            f"  (seeds: {', '.join(f'{v:.5f}' for v in losses)})"
        )
    for name in ("random", "asha"):
        pbt, other = (statistics.median(v[0] for v in results[n]) for n in ("pbt", name))
        wins = sum(p[0] < o[0] for p, o in zip(results["pbt"], results[name], strict=True))
        print(f"  pbt / {name} = {pbt / other:.2f} (pbt lower on {wins}/{seeds} seeds)")


if __name__ == "__main__":
    main()
