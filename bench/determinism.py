"""Cost of deterministic mode on CPU: the trial runner's training loop with `configure_determinism` (what every
trial runs) vs torch's defaults (non-deterministic algorithms allowed), same thread count, same data order.
Rounds alternate between the modes; medians are compared. Goal: deterministic / default <= 1.05.

    python bench/determinism.py [--epochs 10] [--rounds 5] [--hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from orchestrator.train.determinism import configure_determinism, epoch_permutation, seed_everything  # noqa: E402
from orchestrator.train.loop import evaluate, make_optimizer, task_loss  # noqa: E402
from orchestrator.workloads.digits import digits_mlp  # noqa: E402


def train(deterministic: bool, epochs: int, hidden: int) -> tuple[float, float]:
    """Seconds for `epochs` epochs, and the final validation loss."""
    torch.set_num_threads(1)
    if deterministic:
        configure_determinism(use_gpu=False, threads=1)
    else:
        torch.use_deterministic_algorithms(False)
    workload = digits_mlp()
    config = {**workload.defaults(), "hidden": hidden, "depth": 3, "batch_size": 64}
    seed_everything(0)
    splits = workload.load_data(config)
    (x, y), (xv, yv) = splits.train, splits.val
    model = workload.build_model(config)
    optimizer = make_optimizer(config, model.parameters())
    began = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in epoch_permutation(0, epoch, len(x)).split(config["batch_size"]):
            optimizer.zero_grad(set_to_none=True)
            task_loss(workload.task, model(x[idx]), y[idx]).backward()
            optimizer.step()
        val = evaluate(model, workload.task, xv, yv, "cpu")
    return time.perf_counter() - began, val["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    train(True, 1, args.hidden)  # warm-up: imports, allocator, data cache
    times: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[bool, set[float]] = {True: set(), False: set()}
    for _ in range(args.rounds):
        for mode in (False, True):
            seconds, loss = train(mode, args.epochs, args.hidden)
            times[mode].append(seconds)
            losses[mode].add(loss)
    default, deterministic = statistics.median(times[False]), statistics.median(times[True])
    print(f"digits MLP (3 x {args.hidden}), {args.epochs} epochs, 1 thread, {args.rounds} rounds alternating")
    print(f"  default mode        median {default:.3f} s  ({', '.join(f'{t:.3f}' for t in times[False])})")
    print(
        f"  deterministic mode  median {deterministic:.3f} s  ({', '.join(f'{t:.3f}' for t in times[True])})"
    )
    print(f"  deterministic / default = {deterministic / default:.3f} (goal <= 1.05)")
    print(f"  distinct final val losses: deterministic {len(losses[True])}, default {len(losses[False])}")


if __name__ == "__main__":
    main()
