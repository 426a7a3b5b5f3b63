"""TPE (HyperOpt) whose proposals for a resumed run's trials can be pinned to the configs those trials had.

At max_concurrent > 1, which trials had finished when TPE proposed trial i depends on timing, so a resumed
search may propose another config for a trial the dead run had started (past TPE's random start-up trials).
That trial must continue with the config its checkpoint was trained with, and TPE must learn its result at
that point, not at the one it proposed. Imported only when TPE is used: HyperOpt costs ~0.6 s to import.
"""

from __future__ import annotations

from ray.tune.search.hyperopt import HyperOptSearch


class PinnableHyperOpt(HyperOptSearch):
    """HyperOptSearch whose i-th proposal (i = the trial's index) is replaced by `pinned[i]` where given. Its
    random state is consumed exactly as without pinning, so later proposals follow the same stream."""

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
        _, doc = self._live_trial_mapping[trial_id]
        vals = dict(pinned)
        self._convert_categories_to_indices(vals)  # HyperOpt records a choice by its index
        for label in doc["misc"]["vals"]:
            if label in vals:
                doc["misc"]["vals"][label] = [vals[label]]
        self._hpopt_trials.refresh()
        return {**config, **pinned}
