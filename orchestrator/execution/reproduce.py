"""`hpo reproduce URI TRIAL_ID...`: rerun trials from their recorded configs and seeds and compare every metric
of every recorded epoch, bit for bit, with what the run stored (ray #43900, #13616: "the best trial can't be
reproduced"). 1-worker trials rerun in this process; multi-worker trials as one TorchTrainer with the same
worker count on this machine's Ray (embedded unless one is running), the trials one after another on its
group, so only the first pays the group's start; on CPU or GPU as the run's spec says.
It writes nothing to the run. Determinism holds for the same hardware type, library versions and thread count (see
train/determinism.py), so a difference across machines is information, not necessarily a bug.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
from dataclasses import dataclass, field

import torch

from orchestrator.errors import RunError, SpecError, WorkloadCodeFailed
from orchestrator.execution.differences import first_difference
from orchestrator.execution.runner import plan
from orchestrator.launch.launcher import Rerun
from orchestrator.launch.protocol import Segment
from orchestrator.ray_support.driver import DriverSession
from orchestrator.results import config_of, load_results, load_trials
from orchestrator.results.layout import ITERATION_KEY
from orchestrator.results.ops import stored_spec
from orchestrator.storage import LocalStore, open_store
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import CHECKPOINT_KEY


@dataclass
class Reproduction:
    trial_id: str
    iterations: int
    identical: bool
    first_difference: dict | None = None  # iteration, metric, recorded, reproduced
    metrics: list[str] = field(default_factory=list)
    # the last checkpoint's contents (the training code's dict: weights, optimizer, ...) compared tensor by
    # tensor: "identical", "differs at <key path>", or why it was not compared
    checkpoint: str = "not compared"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.identical:
            return (
                f"{self.trial_id}: bit-identical ({self.iterations} epoch(s), "
                f"{', '.join(self.metrics)} compared exactly; last checkpoint: {self.checkpoint})"
            )
        if self.first_difference is None:
            return (
                f"{self.trial_id}: every metric is bit-identical, but the last checkpoint {self.checkpoint}"
            )
        d = self.first_difference
        return (
            f"{self.trial_id}: differs first at epoch {d['iteration']}, {d['metric']}: recorded "
            f"{d['recorded']!r}, reproduced {d['reproduced']!r}"
        )


def _same(a, b) -> bool:
    return (
        (a is None and b is None)
        or a == b
        or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    )


def reproduce(uri: str, trial_id: str, options=None) -> Reproduction:
    """Rerun one trial of the run at `uri`; see reproduce_trials."""
    return reproduce_trials(uri, [trial_id], options)[0]


def reproduce_trials(uri: str, trial_ids: list[str], options=None) -> list[Reproduction]:
    """Rerun each trial from its recorded config and seed, one after another (DDP trials on one fresh worker
    group, which the first starts and the others follow on, warm), and compare each with what the run stored."""
    spec = stored_spec(uri, options)
    trials = {t["trial_id"]: t for t in load_trials(uri, options=options).to_pylist()}
    trial_ids = list(dict.fromkeys(trial_ids))  # a trial named twice is rerun once
    if unknown := [t for t in trial_ids if t not in trials]:
        known = ", ".join(sorted(trials)[:5]) + (" ..." if len(trials) > 5 else "")
        raise RunError(f"{uri} has no trial {unknown[0]!r} (it has: {known})")
    recorded = {t: [] for t in trial_ids}
    for row in load_results(uri, options=options).to_pylist():
        if row["trial_id"] in recorded:
            recorded[row["trial_id"]].append(row)
    for trial_id, rows in recorded.items():
        if not rows:
            raise RunError(f"{trial_id} reported no epoch: nothing to compare")
        rows.sort(key=lambda r: r["iteration"])
    recorded_all: dict[str, list[dict]] = {}
    exploiting = [t for t in trial_ids if any(r.get("parent_trial") for r in recorded[t])]
    if exploiting:  # PBT: the rows of every trial a lineage runs through
        for row in load_results(uri, options=options).to_pylist():
            recorded_all.setdefault(row["trial_id"], []).append(row)
        for rows in recorded_all.values():
            rows.sort(key=lambda r: r["iteration"])
    reruns = [
        Rerun(
            t,
            config_of(trials[t]),
            int(trials[t]["trial_seed"]),
            recorded[t][-1]["iteration"],
            tuple(lineage_segments(recorded_all, t)) if t in exploiting else (),
        )
        for t in trial_ids
    ]
    results = []
    with DriverSession() as session:
        the_plan = plan(spec, uri)
        # the spec's max_epochs (a schedule may depend on it), each stopped where the trial was stopped
        # the reruns' checkpoints are thrown away
        with tempfile.TemporaryDirectory(prefix="hpo-reproduce-") as scratch:
            try:
                reproduced = the_plan.launcher.reproduce(session, reruns, the_plan.trial_plan, scratch)
            except (RunError, SpecError):
                raise
            except Exception as error:
                raise WorkloadCodeFailed.logged(f"reproduce {', '.join(trial_ids)}", error) from None
            stored = open_store(uri, options or spec.storage_options.s3())
            # the metrics the run declared and stored (every trial's rows have the same columns)
            metrics = [m for m in the_plan.schema.metrics if m in recorded[trial_ids[0]][0]]
            for trial_id, rows in recorded.items():
                checkpoint = _compare_checkpoints(
                    TrialCheckpoints(stored, trial_id, keep=1, mode="min"),
                    TrialCheckpoints(LocalStore(scratch), trial_id, keep=1, mode="min"),
                    rows[-1]["iteration"],
                )
                results.append(_compare(trial_id, rows, reproduced.get(trial_id, []), metrics, checkpoint))
    return results


def lineage_segments(rows: dict[str, list[dict]], trial: str) -> list[Segment]:
    """The segments that rerun `trial`'s rows of a PBT run: each of its own (from scratch, or after each
    exploit from the state its donor had then), the donor's lineage up to the exploit before each (recursively;
    their reports are not compared)."""
    counter = itertools.count()

    def config_at(name: str, epoch: int) -> dict:
        return config_of(next(r for r in rows[name] if r["iteration"] == epoch))

    def segments(name: str, upto: int, keep: bool) -> list[Segment]:
        mine = [r for r in rows[name] if r["iteration"] <= upto]
        exploits = sorted({(r["exploited_at"], r["parent_trial"]) for r in mine if r.get("parent_trial")})
        starts = [(0, None), *exploits] if keep else (exploits[-1:] or [(0, None)])
        found: list[Segment] = []
        for i, (epoch, donor) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else upto
            source = None
            if donor is not None:
                found += segments(donor, epoch, keep=False)
                source = found[-1].scratch_id
            last_own = (
                keep and i == len(starts) - 1
            )  # written where the stored checkpoint is compared with it
            scratch_id = name if last_own else f"{name}~{epoch + 1}-{end}~{next(counter)}"
            seed = int(mine[0]["trial_seed"])
            found.append(
                Segment(name, scratch_id, config_at(name, epoch + 1), seed, epoch + 1, end, source, keep)
            )
        return found

    return segments(trial, rows[trial][-1]["iteration"], keep=True)


def _compare(trial_id: str, rows: list[dict], reproduced: list[dict], metrics: list[str], checkpoint: str):
    """Every metric of every recorded epoch against the rerun's, then the last checkpoint's verdict."""
    result = Reproduction(trial_id, len(rows), True, metrics=metrics, checkpoint=checkpoint)
    again = {m[ITERATION_KEY]: m for m in reproduced}
    for row in rows:
        for metric in metrics:
            value = again.get(row["iteration"], {}).get(metric)
            if not _same(row[metric], value):
                result.identical = False
                result.first_difference = {
                    "iteration": row["iteration"],
                    "metric": metric,
                    "recorded": row[metric],
                    "reproduced": value,
                }
                return result
    result.identical = not checkpoint.startswith(("differs", "is unreadable"))
    return result


def _compare_checkpoints(stored: TrialCheckpoints, rerun: TrialCheckpoints, iteration: int) -> str:
    """The stored trial's latest checkpoint against the rerun's, when both are of `iteration`."""
    try:
        a = stored.load_latest()
    except (
        Exception
    ) as error:  # damaged or unsafe: nothing to vouch for, so the reproduction is not identical
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        return f"is unreadable (the stored one does not load: {type(error).__name__}: {reason})"
    try:
        b = rerun.load_latest()
    except Exception as error:  # the comparison of metrics stands on its own
        return f"not compared ({type(error).__name__}: {error})"
    if a is None or b is None:
        return "not compared (no checkpoint " + ("stored)" if a is None else "written by the rerun)")
    if a.get("iteration") != iteration or b.get("iteration") != iteration:
        return f"not compared (the stored one is of epoch {a.get('iteration')}, not {iteration})"
    found = first_difference(a[CHECKPOINT_KEY], b[CHECKPOINT_KEY], same=_same_leaf, exact_keys=True)
    if found is None:
        return "identical"
    path, what = found
    where = "".join(f"/{step}" for step in path) + ("" if what == "value" else f" ({what})")
    return f"differs at {where or 'its top level'}"


def _same_leaf(a, b) -> bool:
    """Tensors bit for bit (dtype, shape and every value); anything else as a metric is compared."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return same and a.shape == b.shape and torch.equal(a, b)
    return _same(a, b)
