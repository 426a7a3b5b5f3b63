"""Resume's searcher side without Ray: TPE proposals pinned to a resumed run's recorded configs."""

from __future__ import annotations

import ray_internals
from conftest import spec_dict

from orchestrator.spec import parse_spec
from orchestrator.tuning.tpe import PinnableHyperOpt
from orchestrator.tuning.tune_search import build_search

SPEC = parse_spec(
    spec_dict(
        search={
            "algorithm": "hyperopt",
            "num_samples": 30,
            "max_concurrent": 2,
            "space": {"lr": {"loguniform": [1e-3, 1e-1]}, "hidden": {"choice": [16, 32]}},
        }
    )
)


def _tpe(pinned=None) -> PinnableHyperOpt:
    search_alg, _, _ = build_search(SPEC)
    searcher = search_alg.searcher.searcher  # SearchGenerator -> ConcurrencyLimiter -> TPE
    assert isinstance(searcher, PinnableHyperOpt)
    searcher.pinned = dict(pinned or {})
    return searcher


def _vals(searcher, index: int) -> dict:
    return ray_internals.hyperopt_record(searcher, index)[0]


def test_a_pinned_proposal_is_the_recorded_config_and_tpe_learns_it_there():
    free = _tpe()
    proposed = [free.suggest(f"t{i}") for i in range(3)]
    recorded = {"lr": 0.0123, "hidden": 32 if proposed[1]["hidden"] == 16 else 16}  # differs in both
    pinned = _tpe({1: recorded})
    got = [pinned.suggest(f"t{i}") for i in range(3)]
    assert got[1] == recorded
    assert _vals(pinned, 1) == {"lr": 0.0123, "hidden": [16, 32].index(recorded["hidden"])}  # choice: index
    assert got[0] == proposed[0] and got[2] == proposed[2]  # the random stream is consumed as without pinning
    pinned.on_trial_complete("t1", {"val_loss": 0.5})
    assert ray_internals.hyperopt_record(pinned, 1)[1] == {"loss": 0.5, "status": "ok"}


def test_pinning_an_unchanged_proposal_changes_nothing():
    free = _tpe()
    proposed = [free.suggest(f"t{i}") for i in range(2)]
    pinned = _tpe({0: dict(proposed[0]), 1: dict(proposed[1])})
    assert [pinned.suggest(f"t{i}") for i in range(2)] == proposed
