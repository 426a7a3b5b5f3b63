"""ASHA for several objectives: at each rung, the trials are ranked by non-dominated sorting (Pareto rank, then
NSGA-II's crowding distance), and a trial goes on only if it is in the top 1/reduction_factor of the trials that
reached that rung so far, itself included; as Syne Tune's MOASHA does, and as Ray Tune's ASHA does with one metric.

Ray Tune's ASHAScheduler compares one number per trial against a quantile, which several objectives do not have.
This keeps its rungs (grace_period x reduction_factor^k epochs, below max_epochs) and its asynchrony (a trial is
judged when it reaches a rung, against those that reached it before), and ranks points instead of numbers. It
keeps nothing Tune must checkpoint: `hpo resume` replays the finished trials' results into it (fast_forward.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.search.objectives import Objective, nondominated_order, point_of


class ParetoAsha(FIFOScheduler):
    def __init__(
        self,
        *,
        objectives: Sequence[Objective],
        time_attr: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
    ):
        super().__init__()
        self.objectives = tuple(objectives)
        self.time_attr, self.reduction_factor = time_attr, reduction_factor
        milestones, t = [], grace_period
        while t < max_t:
            milestones.append(t)
            t = t * reduction_factor
        # largest first, as Tune's ASHA: a report is judged at the highest rung it has reached and not yet passed
        self.rungs: list[tuple[float, dict[str, tuple[float, ...] | None]]] = [
            (m, {}) for m in reversed(milestones)
        ]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are this scheduler's own; Tune's one metric is only the primary of them

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.time_attr not in result:
            return TrialScheduler.CONTINUE
        now = result[self.time_attr]
        for milestone, recorded in self.rungs:
            if now < milestone or trial.trial_id in recorded:
                continue
            recorded[trial.trial_id] = point_of(result, self.objectives)
            return TrialScheduler.CONTINUE if self.kept(trial.trial_id, recorded) else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def kept(self, trial_id: str, recorded: dict) -> bool:
        """Whether `trial_id` is in the top 1/reduction_factor of the points recorded at a rung (at least one
        trial goes on: the first to reach a rung always does)."""
        names = list(recorded)
        order = nondominated_order([recorded[name] for name in names])
        keep = max(1, math.ceil(len(names) / self.reduction_factor))
        return names.index(trial_id) in order[:keep]

    def debug_string(self) -> str:
        return "ParetoAsha: " + ", ".join(f"{len(r)} at {m:g}" for m, r in self.rungs)
