"""Proposals a resumed run can pin: the mixin every adaptive searcher of ours (TPE, Optuna's samplers) takes.

At max_concurrent > 1, which trials had finished when an adaptive searcher proposed trial i depends on timing, so
a resumed search may propose another config for a trial the dead run had started. That trial must continue with
the config its checkpoint was trained with, and the searcher must learn its result at that point, not at the one
it proposed. tuning/fast_forward.py fills `pinned` (trial index -> the searched hyperparameters it had). The
searcher proposes first, as it would have, so its random state moves exactly as without pinning and later
proposals follow the same stream; only a proposal that differs is replaced (`repin`, each searcher's own).
"""

from __future__ import annotations


class Pinnable:
    """Mixin for a Tune Searcher: its i-th proposal (i = the trial's index) is `pinned[i]` where that is given."""

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
        self.repin(trial_id, pinned)
        return {**config, **pinned}

    def repin(self, trial_id: str, config: dict) -> None:
        """Make the searcher's own record of `trial_id` say `config`, the config that actually runs."""
        raise NotImplementedError
