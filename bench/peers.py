"""hpo against the tools a user would pick instead, on the same work, as whole processes (imports and Ray's start
included), in one run on one machine.

The work: the digits MLP (hidden 64, depth 2, batch 64: every trial costs the same compute whatever is drawn),
random search over lr (log-uniform) and dropout, TRIALS x EPOCHS, CONCURRENCY trials at a time, one thread per
trial, a validation loss reported and a checkpoint written every epoch, no early stopping. Each tool trains
with the same data split and model code (orchestrator/workloads/digits.py).

- hpo:          `hpo run SPEC --quiet` (FIFO, random search).
- Optuna:       a study with n_jobs=CONCURRENCY, JournalStorage on a file, RandomSampler; `trial.report` and a
                `torch.save` checkpoint every epoch.
- bare Ray Tune: a function trainable with `tune.report(..., checkpoint=...)` every epoch, reused actors.

Rounds alternate between the tools; medians are compared. The smallest size (2 x 1 by default) is each tool's
fixed cost per job: its imports, Ray's start and stop, its trial processes' start. Each larger size is then
also compared beyond that fixed cost (its wall minus the smallest size's): what the work itself costs in each
tool. `pip install -e '.[bench]'` (or `make bench`) installs Optuna.

    python bench/peers.py [--sizes 64x10,16x10,2x1] [--concurrency 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMON = """
import os, sys, time, math
sys.path.insert(0, {root!r})
import torch
import torch.nn.functional as F
from orchestrator.workloads.digits import build_mlp, load_digits_splits

def train(config, epochs, seed, on_epoch):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    splits = load_digits_splits(config)
    (x, y), (xv, yv) = splits.train, splits.val
    model = build_mlp({{"hidden": 64, "depth": 2, "dropout": config["dropout"]}})
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(model(xv), yv))
        on_epoch(epoch, val_loss, {{"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch}})
    return val_loss
"""

OPTUNA = (
    COMMON
    + """
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
trials, epochs, concurrency, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = JournalStorage(JournalFileBackend(os.path.join(work, "journal.log")))
study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), direction="minimize")
os.makedirs(os.path.join(work, "ckpt"), exist_ok=True)

def objective(trial):
    config = {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True), "dropout": trial.suggest_float("dropout", 0, 0.3)}
    def on_epoch(epoch, val_loss, state):
        trial.report(val_loss, epoch)
        torch.save(state, os.path.join(work, "ckpt", f"{trial.number}-{epoch}.pt"))
    return train(config, epochs, trial.number, on_epoch)

study.optimize(objective, n_trials=trials, n_jobs=concurrency)
assert len(study.trials) == trials
"""
)

BARE = (
    COMMON
    + """
import tempfile
import ray
from ray import tune
trials, epochs, concurrency, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ray.init(num_cpus=concurrency, logging_level="ERROR")

def trainable(config):
    def on_epoch(epoch, val_loss, state):
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, os.path.join(tmp, "c.pt"))
            tune.report({"val_loss": val_loss, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(tmp))
    train(config, epochs, config["seed"], on_epoch)

tuner = tune.Tuner(
    tune.with_resources(trainable, {"CPU": 1}),
    param_space={"lr": tune.loguniform(1e-3, 1e-1), "dropout": tune.uniform(0, 0.3), "seed": tune.randint(0, 2**31)},
    tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=trials, reuse_actors=True,
                                max_concurrent_trials=concurrency),
    run_config=tune.RunConfig(storage_path=work, name="bare", verbose=0,
                              checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
)
grid = tuner.fit()
assert len(grid) == trials and not grid.errors
"""
)


def spec_text(trials: int, epochs: int, concurrency: int, storage: str) -> str:
    return textwrap.dedent(
        f"""\
        name: peers
        workload: digits-mlp
        seed: 0
        storage: {storage}
        search:
          algorithm: random
          num_samples: {trials}
          max_concurrent: {concurrency}
          metric: val_loss
          mode: min
          space:
            lr: {{loguniform: [1.0e-3, 1.0e-1]}}
            dropout: {{uniform: [0.0, 0.3]}}
          fixed: {{hidden: 64, depth: 2, batch_size: 64}}
        train:
          max_epochs: {epochs}
          cpus_per_worker: 1
          checkpoints_to_keep: 2
        """
    )


def _timed(command: list[str], env: dict | None = None) -> float:
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def run_hpo(trials: int, epochs: int, concurrency: int, work: Path) -> float:
    spec = work / "peers.yaml"
    spec.write_text(spec_text(trials, epochs, concurrency, str(work / "results")))
    return _timed([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--quiet"])


def run_script(source: str, name: str, trials: int, epochs: int, concurrency: int, work: Path) -> float:
    script = work / f"peer_{name}.py"  # not optuna.py: it would shadow the package
    script.write_text(source.replace("{root!r}", repr(str(ROOT))).replace("{{", "{").replace("}}", "}"))
    out = work / f"{name}-{time.monotonic_ns()}"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return _timed([sys.executable, str(script), str(trials), str(epochs), str(concurrency), str(out)], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x10,16x10,2x1", help="TRIALSxEPOCHS, comma-separated")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SystemExit("bench/peers.py needs Optuna: pip install -e '.[bench]'") from None
    medians: dict[tuple[int, int], dict[str, float]] = {}
    for size in args.sizes.split(","):
        trials, epochs = (int(v) for v in size.lower().split("x"))
        work = Path(tempfile.mkdtemp(prefix="hpo-peers-"))
        walls: dict[str, list[float]] = {"hpo": [], "optuna": [], "ray": []}
        for _ in range(args.rounds):
            walls["hpo"].append(run_hpo(trials, epochs, args.concurrency, work))
            walls["optuna"].append(run_script(OPTUNA, "optuna", trials, epochs, args.concurrency, work))
            walls["ray"].append(run_script(BARE, "ray", trials, epochs, args.concurrency, work))
        med = medians[trials, epochs] = {k: statistics.median(v) for k, v in walls.items()}
        print(f"{trials} trials x {epochs} epochs, {args.concurrency} at a time, median of {args.rounds}:")
        for name, label in (("hpo", "hpo run"), ("optuna", "Optuna"), ("ray", "bare Ray Tune")):
            print(f"  {label:<14} {med[name]:6.1f}s  runs {[round(t, 1) for t in walls[name]]}")
        print(
            f"  ratio hpo/Optuna {med['hpo'] / med['optuna']:.2f}   ratio hpo/bare Ray Tune "
            f"{med['hpo'] / med['ray']:.2f}",
            flush=True,
        )
    if len(medians) > 1:
        smallest = min(medians, key=lambda size: size[0] * size[1])
        fixed = medians[smallest]
        print(f"beyond each tool's fixed cost (its {smallest[0]} x {smallest[1]} wall):")
        for (trials, epochs), med in medians.items():
            if (trials, epochs) == smallest:
                continue
            work = {name: med[name] - fixed[name] for name in med}
            ratio = f"{work['hpo'] / work['optuna']:.2f}" if work["optuna"] > 0.5 else "n/a (too little work)"
            print(
                f"  {trials} x {epochs}: hpo {work['hpo']:.1f}s, Optuna {work['optuna']:.1f}s, bare Ray Tune "
                f"{work['ray']:.1f}s   ratio hpo/Optuna {ratio}"
            )


if __name__ == "__main__":
    main()
