"""`hpo reproduce URI TRIAL_ID`: rerun one trial from its recorded config and seed and compare every metric
of every recorded epoch, bit for bit, with what the run stored (ray #43900, #13616: "the best trial can't be
reproduced"). A 1-worker trial reruns in this process; a multi-worker trial as a TorchTrainer with the same
worker count on this machine's Ray (embedded unless one is running); on CPU or GPU as the run's spec says.
It writes nothing to the run. Determinism holds for the same hardware type, library versions and thread count (see
determinism.py), so a difference across machines is information, not necessarily a bug.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field

from orchestrator.errors import RunError


@dataclass
class Reproduction:
    trial_id: str
    iterations: int
    identical: bool
    first_difference: dict | None = None  # iteration, metric, recorded, reproduced
    metrics: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.identical:
            return (
                f"{self.trial_id}: bit-identical ({self.iterations} epoch(s), "
                f"{', '.join(self.metrics)} compared exactly)"
            )
        d = self.first_difference
        return (
            f"{self.trial_id}: differs first at epoch {d['iteration']}, {d['metric']}: recorded "
            f"{d['recorded']!r}, reproduced {d['reproduced']!r}"
        )


class _Collect:
    def __init__(self):
        self.metrics: list[dict] = []

    def report(self, metrics: dict) -> None:
        self.metrics.append(metrics)


def _same(a, b) -> bool:
    return (
        (a is None and b is None)
        or a == b
        or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    )


def reproduce(uri: str, trial_id: str, options=None) -> Reproduction:
    from orchestrator.checkpoints import TrialCheckpoints
    from orchestrator.results import config_of, load_results, load_trials
    from orchestrator.results.ops import stored_spec
    from orchestrator.runner import plan
    from orchestrator.storage import LocalStore
    from orchestrator.training import run_training
    from orchestrator.trial import _device

    spec = stored_spec(uri, options)
    trials = {t["trial_id"]: t for t in load_trials(uri, options=options).to_pylist()}
    if trial_id not in trials:
        known = ", ".join(sorted(trials)[:5]) + (" ..." if len(trials) > 5 else "")
        raise RunError(f"{uri} has no trial {trial_id!r} (it has: {known})")
    trial = trials[trial_id]
    rows = sorted(
        (r for r in load_results(uri, options=options).to_pylist() if r["trial_id"] == trial_id),
        key=lambda r: r["iteration"],
    )
    if not rows:
        raise RunError(f"{trial_id} reported no epoch: nothing to compare")
    hp = config_of(trial)
    the_plan = plan(spec, uri).trial_plan
    the_plan = dataclasses.replace(the_plan, max_epochs=rows[-1]["iteration"])
    with tempfile.TemporaryDirectory(prefix="hpo-reproduce-") as scratch:  # its checkpoints are thrown away
        if the_plan.workers > 1:
            reproduced = _rerun_ddp(hp, int(trial["trial_seed"]), the_plan, trial_id, scratch)
        else:
            reporter = _Collect()
            checkpoints = TrialCheckpoints(LocalStore(scratch), trial_id, keep=1, mode=spec.search.mode)
            run_training(
                hp,
                int(trial["trial_seed"]),
                the_plan,
                reporter,
                checkpoints,
                restore=False,
                device=_device(the_plan, 0),
            )
            reproduced = reporter.metrics
    metrics = [m for m in ("train_loss", "val_loss", "val_accuracy") if m in rows[0]]
    result = Reproduction(trial_id, len(rows), True, metrics=metrics)
    again = {m["epoch"]: m for m in reproduced}
    for row in rows:
        for metric in metrics:
            reproduced = again.get(row["iteration"], {}).get(metric)
            if not _same(row[metric], reproduced):
                result.identical = False
                result.first_difference = {
                    "iteration": row["iteration"],
                    "metric": metric,
                    "recorded": row[metric],
                    "reproduced": reproduced,
                }
                return result
    return result


def _rerun_ddp(hp: dict, seed: int, plan, trial_id: str, scratch: str) -> list[dict]:
    """A multi-worker trial again, as a TorchTrainer with the trial's worker count on this machine's Ray."""
    import json
    from pathlib import Path

    from orchestrator.ray_env import start_ray, trial_cpus
    from orchestrator.trial import ddp_trainer

    out = Path(scratch) / "metrics.jsonl"
    plan = dataclasses.replace(plan, train_storage=str(Path(scratch) / "train"))
    started = start_ray(min_cpus=trial_cpus(plan) + 1)
    try:
        ddp_trainer(
            _reproduce_worker,
            {"hp": hp, "seed": seed, "plan": plan, "out": str(out), "scratch": scratch, "trial_id": trial_id},
            plan,
            run_name=f"reproduce-{trial_id}",
        ).fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


class _FileReporter:
    def __init__(self, path: str):
        self.path = path

    def report(self, metrics: dict) -> None:
        import json

        with open(self.path, "a") as fh:
            fh.write(json.dumps({k: v for k, v in metrics.items() if not k.endswith("checkpoint")}) + "\n")


def _reproduce_worker(config: dict) -> None:
    import ray.train

    from orchestrator.checkpoints import TrialCheckpoints
    from orchestrator.storage import LocalStore
    from orchestrator.training import run_training
    from orchestrator.trial import _device

    ctx, plan = ray.train.get_context(), config["plan"]
    rank = ctx.get_world_rank()
    reporter = _FileReporter(config["out"]) if rank == 0 else _Collect()
    checkpoints = TrialCheckpoints(LocalStore(config["scratch"]), config["trial_id"], keep=1, mode=plan.mode)
    run_training(
        config["hp"],
        config["seed"],
        plan,
        reporter,
        checkpoints,
        restore=False,
        rank=rank,
        world=ctx.get_world_size(),
        device=_device(plan, ctx.get_local_rank()),
    )
