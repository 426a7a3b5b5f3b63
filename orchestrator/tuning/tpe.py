"""TPE (HyperOpt) as hpo runs it: Ray Tune's HyperOptSearch, with proposals a resumed run can pin. Its own module:
it imports hyperopt and scipy (0.6 s), which only a hyperopt search should pay for."""

from __future__ import annotations

from ray.tune.search.hyperopt import HyperOptSearch

from orchestrator.ray_support.ray_compat import pin_hyperopt_suggestion


class PinnableHyperOpt(HyperOptSearch):
    """HyperOptSearch whose i-th proposal (i = the trial's index) is replaced by `pinned[i]` where given.

    At max_concurrent > 1, which trials had finished when TPE proposed trial i depends on timing, so a resumed
    search may propose another config for a trial the dead run had started (past TPE's random start-up trials).
    That trial must continue with the config its checkpoint was trained with, and TPE must learn its result at
    that point, not at the one it proposed. The random state is consumed exactly as without pinning, so later
    proposals follow the same stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pinned: dict[int, dict] = {}
        self._proposed = 0

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        index, self._proposed = self._proposed, self._proposed + 1
        pinned = self.pinned.get(index)
        if (
            not isinstance(config, dict)
            or pinned is None
            or all(config.get(k) == v for k, v in pinned.items())
        ):
            return config
        pin_hyperopt_suggestion(self, trial_id, pinned)
        return {**config, **pinned}
