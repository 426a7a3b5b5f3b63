"""TPE (HyperOpt) as hpo runs it: Ray Tune's HyperOptSearch, with proposals a resumed run can pin. Its own module:
it imports hyperopt and scipy (0.6 s), which only a hyperopt search should pay for."""

from __future__ import annotations

from ray.tune.search.hyperopt import HyperOptSearch

from orchestrator.ray_support.ray_compat import pin_hyperopt_suggestion
from orchestrator.tuning.pinning import Pinnable


class PinnableHyperOpt(Pinnable, HyperOptSearch):
    """HyperOptSearch whose i-th proposal is pinned where a resumed run says so (tuning/pinning.py)."""

    def repin(self, trial_id: str, config: dict) -> None:
        pin_hyperopt_suggestion(self, trial_id, config)
