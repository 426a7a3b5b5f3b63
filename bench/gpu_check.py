"""`make gpu-check`: what a GPU machine must show, measured in one go (at most ~8 minutes on one GPU), printed and
written as JSON (--out, default gpu-check.json). Without a CUDA GPU it says so in a line and exits 0.

On the GPU:
- reruns bit-identical with deterministic algorithms: the standard loop (digits-mlp) and a custom loop
  (digits-cnn), 1 worker, each job run twice, every reported metric compared exactly;
- bf16 against fp32: wall of the same job, and reruns identical within each precision;
- several trials per GPU: trials per hour with train.gpus_per_worker 0.25 (4 at once) against 1 (one at a time);
- how busy the GPU is across a 32-trial ASHA search (NVML utilization sampled every 0.2 s; goal >= 85%);
- what the ledger recorded of that search's GPU per trial: utilization, peak memory, GPU-hours held and idle;
- the cost of deterministic mode on the GPU (the trial loop, deterministic against torch's defaults);
- a trial's start after the first (its first report's time in the trial, less that epoch's own time).

Every job runs on one Ray that this process starts. `--cpu` rehearses every measurement that can run without
CUDA (small sizes, on a Ray told it has one GPU, the trials training on the CPU as HPO_FAKE_GPU lets them): the tests run it, so the script's own paths are
checked on machines without a GPU. bf16 and NVML need CUDA and say so there.

    python bench/gpu_check.py [--out gpu-check.json] [--cpu]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def job(
    name: str,
    workload: str,
    storage: str,
    *,
    trials: int,
    at_once: int,
    epochs: int,
    train: dict,
    scheduler: dict | None = None,
    metric: str = "val_loss",
    mode: str = "min",
    space: dict | None = None,
) -> dict:
    return {
        "name": name,
        "workload": workload,
        "seed": 0,
        "storage": storage,
        "search": {
            "algorithm": "random",
            "num_samples": trials,
            "max_concurrent": at_once,
            "metric": metric,
            "mode": mode,
            "space": space or {"lr": {"loguniform": [1.0e-3, 3.0e-2]}},
        },
        "scheduler": scheduler or {"type": "fifo"},
        "train": {"max_epochs": epochs, **train},
    }


class Check:
    def __init__(self, cpu: bool, work: Path):
        self.cpu, self.work = cpu, work

    def run(self, spec: dict) -> tuple[str, float]:
        """Run `spec` on this process's Ray; its results URI and wall time."""
        import orchestrator

        began = time.perf_counter()
        summary = orchestrator.run(orchestrator.parse_spec(spec), progress=lambda line: None)
        wall = time.perf_counter() - began
        if set(summary.statuses) - {"completed", "stopped_early"}:
            raise SystemExit(f"gpu-check: job {spec['name']} ended with {summary.statuses}")
        return summary.results_uri, wall

    def reruns_identical(self, spec: dict) -> dict:
        """Run `spec` twice; whether every reported metric of every trial and epoch is the same, and the walls."""
        import orchestrator

        tables, walls = [], []
        for i in range(2):
            uri, wall = self.run({**spec, "name": f"{spec['name']}-{i}"})
            table = orchestrator.load_results(uri).sort_by(
                [("trial_id", "ascending"), ("iteration", "ascending")]
            )
            metrics = [c for c in table.column_names if not c.startswith("config/") and c not in VOLATILE]
            tables.append(table.select(metrics).to_pylist())
            walls.append(wall)
        return {
            "identical": tables[0] == tables[1],
            "rows": len(tables[0]),
            "walls_s": [round(w, 1) for w in walls],
        }


VOLATILE = ("epoch_time_s", "time_total_s", "timestamp", "node_id", "attempt")  # wall clocks and placement


def deterministic_cost(device: str, epochs: int, hidden: int) -> dict:
    """The trial loop's epochs (a 3-layer MLP of `hidden` units), deterministic against torch's defaults,
    alternating, medians."""
    import torch

    from orchestrator.train.determinism import configure_determinism, epoch_permutation, seed_everything
    from orchestrator.train.loop import make_optimizer, task_loss
    from orchestrator.workloads.digits import digits_mlp

    def once(deterministic: bool) -> float:
        if deterministic:
            configure_determinism(use_gpu=device != "cpu", threads=1)
        else:
            torch.use_deterministic_algorithms(False)
        workload = digits_mlp()
        config = {**workload.defaults(), "hidden": hidden, "depth": 3, "batch_size": 64}
        seed_everything(0)
        x, y = workload.load_data(config).train
        x, y = x.to(device), y.to(device)
        model = workload.build_model(config).to(device)
        optimizer = make_optimizer(config, model.parameters())
        if device != "cpu":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for epoch in range(1, epochs + 1):
            for idx in epoch_permutation(0, epoch, len(x)).to(device).split(config["batch_size"]):
                optimizer.zero_grad(set_to_none=True)
                task_loss(workload.task, model(x[idx]), y[idx]).backward()
                optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    once(True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):
        for mode in (False, True):
            times[mode].append(once(mode))
    torch.use_deterministic_algorithms(False)
    return {
        "deterministic_over_default": round(
            statistics.median(times[True]) / statistics.median(times[False]), 3
        )
    }


class BusySampler:
    """GPU utilization (NVML, through torch.cuda.utilization) sampled every 0.2 s while it runs."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import torch

        while not self._stop.wait(0.2):
            self.samples.append(torch.cuda.utilization(0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def start_after_first(uri: str) -> float | None:
    """Of a job run one trial at a time: the median over its trials but the first of their first report's time
    in the trial less that epoch's own time, what starting a trial cost once the job was under way."""
    import orchestrator

    rows = (
        orchestrator.load_results(uri)
        .sort_by([("trial_id", "ascending"), ("iteration", "ascending")])
        .to_pylist()
    )
    firsts = {}
    for row in rows:
        firsts.setdefault(row["trial_id"], row)
    costs = [r["time_total_s"] - r["epoch_time_s"] for _, r in sorted(firsts.items())[1:]]
    return round(statistics.median(costs), 3) if costs else None


def ledger_gpu(uri: str) -> dict:
    """What the ledger recorded of a job's GPU per trial (train/gpu_meter.py): utilization and peak memory over
    its trials, and the GPU-hours held and idle (null utilization: the trials could not read NVML, or trained
    on the CPU as the rehearsal's do)."""
    import orchestrator
    from orchestrator.results.schema import GPU_MEM_PEAK, GPU_UTIL
    from orchestrator.results.summary import ledger_totals

    trials = orchestrator.load_trials(uri).to_pylist()
    utils = [t[GPU_UTIL] for t in trials if t[GPU_UTIL] is not None]
    peaks = [t[GPU_MEM_PEAK] for t in trials if t[GPU_MEM_PEAK] is not None]
    totals = ledger_totals(trials, priced=False)
    return {
        "trials": len(trials),
        "gpu_util_mean": round(statistics.fmean(utils), 1) if utils else None,
        "gpu_mem_peak_gb_max": max(peaks) if peaks else None,
        "gpu_hours": totals["gpu_hours"],
        "gpu_idle_hours": totals["gpu_idle_hours"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--cpu", action="store_true", help="rehearse what runs without CUDA, at small sizes")
    args = parser.parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        reason = "no CUDA GPU here (torch.cuda.is_available() is False): nothing to measure"
        print(f"gpu-check: {reason}")
        Path(args.out).write_text(json.dumps({"card": None, "skipped": reason}) + "\n")
        return 0
    began = time.monotonic()
    small = args.cpu
    from orchestrator.ray_support.driver import DriverSession

    if args.cpu:
        os.environ["HPO_FAKE_GPU"] = "1"  # the declared GPU has no device: the trials train on the CPU
    # one embedded Ray for every job (each run joins it), started as a run starts one (its workers forked from a
    # process that imported torch): on --cpu, told it has one GPU; stopped, and this process put back, at exit
    session = DriverSession().__enter__()
    atexit.register(session.__exit__, None, None, None)
    session.start_ray(num_gpus=1 if args.cpu else None, dashboard=False)
    work = Path(tempfile.mkdtemp(prefix="hpo-gpu-check-"))
    check = Check(args.cpu, work)
    storage = str(work / "runs")
    card = "cpu (rehearsal, --cpu)" if args.cpu else torch.cuda.get_device_name(0)
    figures: dict = {"card": card, "torch": torch.__version__, "rehearsal": args.cpu}
    print(f"gpu-check on {card}")

    def say(name: str, value) -> None:
        figures[name] = value
        print(f"  {name}: {value}", flush=True)

    gpu = {"use_gpu": True}
    trials, epochs = (2, 1) if small else (4, 5)
    say(
        "rerun_standard_loop",
        check.reruns_identical(
            job("std", "digits-mlp", storage, trials=trials, at_once=1, epochs=epochs, train=gpu)
        ),
    )
    say(
        "rerun_custom_loop",
        check.reruns_identical(
            job(
                "custom",
                "digits-cnn",
                storage,
                trials=trials,
                at_once=1,
                epochs=epochs,
                train=gpu,
                metric="val_f1",
                mode="max",
            )
        ),
    )
    if args.cpu:
        say("bf16_vs_fp32", "needs CUDA (precision: bf16 trains on GPUs only)")
    else:
        precisions = {}
        for precision in ("fp32", "bf16"):
            precisions[precision] = check.reruns_identical(
                job(
                    f"p-{precision}",
                    "digits-cnn",
                    storage,
                    trials=4,
                    at_once=1,
                    epochs=5,
                    train={**gpu, "precision": precision},
                    metric="val_f1",
                    mode="max",
                )
            )
        precisions["bf16_over_fp32_wall"] = round(
            statistics.median(precisions["bf16"]["walls_s"])
            / statistics.median(precisions["fp32"]["walls_s"]),
            3,
        )
        say("bf16_vs_fp32", precisions)
    n = 4 if small else 32
    per_hour = {}
    for share, at_once in ((0.25, 4), (1.0, 1)):
        uri, wall = check.run(
            job(
                f"share-{round(share * 100)}",
                "digits-cnn",
                storage,
                trials=n,
                at_once=at_once,
                epochs=1 if small else 2,
                train={**gpu, "gpus_per_worker": share, "cpus_per_worker": 0.5 if small else 1},
                metric="val_f1",
                mode="max",
            )
        )
        per_hour[f"gpus_per_worker {share}"] = round(n / wall * 3600)
        if at_once == 1:
            say("trial_start_after_first_s", start_after_first(uri))
    per_hour["ratio"] = round(per_hour["gpus_per_worker 0.25"] / per_hour["gpus_per_worker 1.0"], 2)
    say("trials_per_hour", per_hour)
    asha = job(
        "busy",
        "digits-cnn",
        storage,
        trials=n,
        at_once=4,
        epochs=3 if small else 9,
        train={**gpu, "gpus_per_worker": 0.25},
        metric="val_f1",
        mode="max",
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
    )
    if args.cpu:
        uri, _ = check.run(asha)
        say("gpu_busy_share", "needs NVML (a CUDA GPU)")
    else:
        with BusySampler() as sampler:
            uri, _ = check.run(asha)
        busy = sum(1 for s in sampler.samples if s > 0) / max(1, len(sampler.samples))
        say(
            "gpu_busy_share",
            {
                "busy": round(busy, 3),
                "mean_utilization": round(statistics.mean(sampler.samples), 1),
                "samples": len(sampler.samples),
                "goal": 0.85,
            },
        )
    say("ledger_of_the_asha_search", ledger_gpu(uri))
    say(
        "deterministic_mode_cost",
        deterministic_cost("cpu" if args.cpu else "cuda", *((2, 128) if small else (10, 512))),
    )
    figures["wall_s"] = round(time.monotonic() - began, 1)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"gpu-check: {figures['wall_s']} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
