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
- hpo, warm:    `hpo run SPEC --quiet` while `hpo up` keeps a warm Ray up (started once, before its rounds),
                PAUSE s before each run (not timed), as between two commands; Optuna (a fresh process) runs
                again in this phase, alternating with these runs, and their ratio is also given within it.
- hpo, session: `orchestrator.run()` in one Python process inside `with orchestrator.session():` (a notebook's
                habit), each run timed inside it; PAUSE s between runs (what a user does between two cells:
                the session starts the next run's trial processes then), not timed.
- Optuna, warm: the same study inside one Python process that has torch imported (its notebook case).

Rounds alternate between the tools; medians are compared. The smallest size (2 x 1 by default) is each tool's
fixed cost per job: its imports, Ray's start and stop, its trial processes' start. Each larger size is then
also compared beyond that fixed cost (its wall minus the smallest size's): what the work itself costs in each
tool. `pip install -e '.[bench]'` (or `make bench`) installs Optuna.

A second comparison is what users wait for: the first good model. With early stopping in both (hpo's ASHA;
Optuna's TPE with its successive-halving pruner), the time from the command's start until the search first
reports a validation loss at or under GOOD (whole process; hpo cold and on `hpo up`'s warm Ray).

    python bench/peers.py [--sizes 64x10,16x10,2x1] [--concurrency 2] [--rounds 3] [--first-good 0.12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


SESSION = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import orchestrator
spec_path, rounds, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
walls = []
with orchestrator.session():
    for _ in range(rounds):
        time.sleep(pause)  # a user between two cells; the session starts the next run's processes meanwhile
        began = time.perf_counter()
        summary = orchestrator.run(orchestrator.load_spec(spec_path), progress=lambda line: None)
        walls.append(time.perf_counter() - began)
        assert summary.statuses.get("completed") == summary.num_trials
print(json.dumps(walls))
"""

OPTUNA_WARM = (
    OPTUNA.split("trials, epochs, concurrency, work =")[0]
    + """
import json
trials, epochs, concurrency, work, rounds = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                             int(sys.argv[5]))
optuna.logging.set_verbosity(optuna.logging.WARNING)
walls = []
for r in range(rounds):
    began = time.perf_counter()
    folder = os.path.join(work, f"round-{r}")
    os.makedirs(os.path.join(folder, "ckpt"))
    storage = JournalStorage(JournalFileBackend(os.path.join(folder, "journal.log")))
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0),
                                direction="minimize")

    def objective(trial):
        config = {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
                  "dropout": trial.suggest_float("dropout", 0, 0.3)}
        def on_epoch(epoch, val_loss, state):
            trial.report(val_loss, epoch)
            torch.save(state, os.path.join(folder, "ckpt", f"{trial.number}-{epoch}.pt"))
        return train(config, epochs, trial.number, on_epoch)

    study.optimize(objective, n_trials=trials, n_jobs=concurrency)
    walls.append(time.perf_counter() - began)
print(json.dumps(walls))
"""
)

OPTUNA_FIRST_GOOD = (
    COMMON
    + """
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
trials, epochs, concurrency, work, good = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                           float(sys.argv[5]))
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = JournalStorage(JournalFileBackend(os.path.join(work, "journal.log")))
study = optuna.create_study(storage=storage, sampler=optuna.samplers.TPESampler(seed=0), direction="minimize",
                            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
os.makedirs(os.path.join(work, "ckpt"), exist_ok=True)
said = []

def objective(trial):
    config = {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True), "dropout": trial.suggest_float("dropout", 0, 0.3)}
    def on_epoch(epoch, val_loss, state):
        if val_loss <= good and not said:
            said.append(1)
            print(f"GOOD {val_loss}", flush=True)
        trial.report(val_loss, epoch)
        torch.save(state, os.path.join(work, "ckpt", f"{trial.number}-{epoch}.pt"))
        if trial.should_prune():
            raise optuna.TrialPruned()
    return train(config, epochs, trial.number, on_epoch)

study.optimize(objective, n_trials=trials, n_jobs=concurrency)
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


def asha_spec_text(trials: int, epochs: int, concurrency: int, storage: str) -> str:
    """The spec of the first-good-model comparison: TPE (hyperopt) with ASHA, as Optuna's TPE with its pruner."""
    text = spec_text(trials, epochs, concurrency, storage).replace("algorithm: random", "algorithm: hyperopt")
    return text + "scheduler: {type: asha, grace_period: 1, reduction_factor: 3}\n"


def _timed(command: list[str], env: dict | None = None) -> float:
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def run_hpo(trials: int, epochs: int, concurrency: int, work: Path, env: dict) -> float:
    spec = work / "peers.yaml"
    spec.write_text(spec_text(trials, epochs, concurrency, str(work / "results")))
    return _timed([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--quiet"], env)


def _script(source: str, name: str, work: Path) -> Path:
    script = work / f"peer_{name}.py"  # not optuna.py: it would shadow the package
    script.write_text(source.replace("{root!r}", repr(str(ROOT))).replace("{{", "{").replace("}}", "}"))
    return script


def run_in_one_process(source: str, name: str, args: list[str], work: Path) -> list[float]:
    """A script that times its own rounds in one process and prints them as JSON on its last line."""
    proc = subprocess.run(
        [sys.executable, str(_script(source, name, work)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def first_good(command: list[str], good: float, env: dict) -> float:
    """Seconds from starting `command` until it first says a validation loss at or under `good` (hpo's progress
    lines on stderr, the Optuna script's GOOD line on stdout); the process is then let finish."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = None
    for line in proc.stdout:
        if seen is None:
            found = re.search(r"val_loss=([0-9.]+)", line) or re.match(r"GOOD ([0-9.]+)", line)
            if found and float(found.group(1)) <= good:
                seen = time.perf_counter() - began
    if proc.wait() != 0 or seen is None:
        raise SystemExit(f"{' '.join(command[:4])}: exit {proc.returncode}, first good {seen}")
    return seen


def run_script(source: str, name: str, trials: int, epochs: int, concurrency: int, work: Path) -> float:
    script = _script(source, name, work)
    out = work / f"{name}-{time.monotonic_ns()}"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return _timed([sys.executable, str(script), str(trials), str(epochs), str(concurrency), str(out)], env)


LABELS = {
    "hpo": "hpo run (cold)",
    "hpo_up": "hpo run, hpo up",
    "session": "hpo session",
    "optuna": "Optuna",
    "optuna_warm": "Optuna, warm",
    "ray": "bare Ray Tune",
    "optuna_beside_up": "Optuna, hpo up's phase",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x10,16x10,2x1", help="TRIALSxEPOCHS, comma-separated")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between runs of a warm session")
    parser.add_argument("--first-good", type=float, default=0.12, help="the validation loss of a good model")
    parser.add_argument("--first-good-size", default="32x10", help="TRIALSxEPOCHS of that comparison")
    args = parser.parse_args()
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SystemExit("bench/peers.py needs Optuna: pip install -e '.[bench]'") from None
    # Two phases, so that nothing of one runs beside the other: every cold tool with no warm Ray up, then the
    # runs on `hpo up`'s warm Ray (up for that phase only). Rounds alternate between the tools of a phase.
    cold = dict(os.environ, HPO_HOME=tempfile.mkdtemp(prefix="hpo-cold-"))  # no warm session is up there
    warm = dict(os.environ, HPO_HOME=tempfile.mkdtemp(prefix="hpo-warm-"))
    medians = _compare_sizes(args, {"hpo": cold}, with_peers=True)
    goods = _first_good(args, {"hpo": cold}, with_optuna=True)
    hpo = [sys.executable, "-m", "orchestrator.cli"]
    up = subprocess.run([*hpo, "up"], cwd=ROOT, capture_output=True, text=True, env=warm)
    if up.returncode != 0:
        raise SystemExit(f"hpo up failed: {up.stderr}")
    try:
        # Optuna again, alternating with the runs on `hpo up`: the warm runs' ratio is taken within their phase
        # (the machine's pace drifts between phases; `hpo up`'s idle Ray costs ~3% of a core beside Optuna)
        warm_medians = _compare_sizes(args, {"hpo_up": warm}, with_peers=False, optuna_as="optuna_beside_up")
        warm_goods = _first_good(args, {"hpo_up": warm}, with_optuna=True, optuna_as="optuna_beside_up")
    finally:
        subprocess.run([*hpo, "down"], cwd=ROOT, capture_output=True, env=warm)
    for size, med in medians.items():
        med.update(warm_medians[size])
        _print_ratios(size, med, args)
    _print_goods({**goods, **warm_goods}, args)
    _beyond_fixed_cost(medians)


def _compare_sizes(args, hpo_envs: dict[str, dict], *, with_peers: bool, optuna_as: str = "optuna") -> dict:
    """Each size: `hpo run` in each environment of `hpo_envs` (by label), Optuna (labelled `optuna_as`) and,
    `with_peers`, bare Ray Tune, an hpo session and Optuna warm, in alternating rounds; prints each size's walls,
    returns the medians."""
    medians: dict[tuple[int, int], dict[str, float]] = {}
    for size in args.sizes.split(","):
        trials, epochs = (int(v) for v in size.lower().split("x"))
        work = Path(tempfile.mkdtemp(prefix="hpo-peers-"))
        walls: dict[str, list[float]] = {name: [] for name in hpo_envs}
        for _ in range(args.rounds):
            for name, env in hpo_envs.items():
                if name == "hpo_up":
                    time.sleep(
                        args.pause
                    )  # a user between two commands: the session starts the next processes
                walls[name].append(run_hpo(trials, epochs, args.concurrency, work, env))
            walls.setdefault(optuna_as, []).append(
                run_script(OPTUNA, "optuna", trials, epochs, args.concurrency, work)
            )
            if with_peers:
                walls.setdefault("ray", []).append(
                    run_script(BARE, "ray", trials, epochs, args.concurrency, work)
                )
        if with_peers:
            rounds, pause = str(args.rounds), str(args.pause)
            walls["session"] = run_in_one_process(
                SESSION, "session", [str(work / "peers.yaml"), rounds, pause], work
            )
            (work / "warm").mkdir()
            walls["optuna_warm"] = run_in_one_process(
                OPTUNA_WARM,
                "optuna_warm",
                [str(trials), str(epochs), str(args.concurrency), str(work / "warm"), rounds],
                work,
            )
        medians[trials, epochs] = {k: statistics.median(v) for k, v in walls.items()}
        print(f"{trials} trials x {epochs} epochs, {args.concurrency} at a time, {args.rounds} rounds:")
        for name, runs in walls.items():
            print(
                f"  {LABELS[name]:<17} median {statistics.median(runs):6.1f}s  runs {[round(t, 1) for t in runs]}"
            )
        sys.stdout.flush()
    return medians


def _print_ratios(size: tuple[int, int], med: dict, args) -> None:
    print(
        f"{size[0]} x {size[1]}, ratio to Optuna (medians of {args.rounds}): hpo cold {med['hpo'] / med['optuna']:.2f}, "
        f"hpo up {med['hpo_up'] / med['optuna']:.2f} (to Optuna in its own phase "
        f"{med['hpo_up'] / med['optuna_beside_up']:.2f}), hpo session {med['session'] / med['optuna']:.2f}; "
        f"hpo session / Optuna warm {med['session'] / max(med['optuna_warm'], 0.05):.2f}; hpo cold / bare Ray Tune "
        f"{med['hpo'] / med['ray']:.2f}"
    )


def _first_good(
    args, hpo_envs: dict[str, dict], *, with_optuna: bool, optuna_as: str = "optuna"
) -> dict[str, list[float]]:
    """Seconds to the first good model: `hpo run` of the ASHA spec in each environment of `hpo_envs` and, with
    `with_optuna`, Optuna's TPE with its pruner, in alternating rounds."""
    trials, epochs = (int(v) for v in args.first_good_size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="hpo-first-good-"))
    spec = work / "asha.yaml"
    spec.write_text(asha_spec_text(trials, epochs, args.concurrency, str(work / "results")))
    optuna = _script(OPTUNA_FIRST_GOOD, "optuna_first_good", work)
    seconds: dict[str, list[float]] = {name: [] for name in hpo_envs}
    hpo = [sys.executable, "-m", "orchestrator.cli", "run", str(spec)]
    for r in range(args.rounds):
        for name, env in hpo_envs.items():
            if name == "hpo_up":
                time.sleep(args.pause)  # as above
            seconds[name].append(first_good(hpo, args.first_good, env))
        if with_optuna:
            out = work / f"optuna-{r}"
            out.mkdir()
            command = [sys.executable, str(optuna), str(trials), str(epochs), str(args.concurrency), str(out)]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            seconds.setdefault(optuna_as, []).append(
                first_good([*command, str(args.first_good)], args.first_good, env)
            )
    return seconds


def _print_goods(seconds: dict[str, list[float]], args) -> None:
    trials, epochs = args.first_good_size.lower().split("x")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(
        f"first report of val_loss <= {args.first_good} ({trials} x {epochs}, early stopping: hpo TPE + ASHA, "
        f"Optuna TPE + successive halving), whole process, {args.rounds} rounds:"
    )
    for name, runs in seconds.items():
        print(f"  {LABELS[name]:<17} median {med[name]:6.1f}s  runs {[round(t, 1) for t in runs]}")
    print(
        f"  ratio to Optuna: hpo cold {med['hpo'] / med['optuna']:.2f}, hpo up {med['hpo_up'] / med['optuna']:.2f} "
        f"(to Optuna in its own phase {med['hpo_up'] / med['optuna_beside_up']:.2f})"
    )


def _beyond_fixed_cost(medians: dict) -> None:
    if len(medians) < 2:
        return
    smallest = min(medians, key=lambda size: size[0] * size[1])
    fixed = medians[smallest]
    print(
        f"each tool's fixed cost per job (its {smallest[0]} x {smallest[1]} wall): "
        + ", ".join(f"{LABELS[name]} {fixed[name]:.1f}s" for name in LABELS)
    )
    print("beyond it:")
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
