"""`hpo analyze`: learning curves, one isolation plot per searched hyperparameter, boundary and seed warnings."""

from __future__ import annotations

import pytest
from conftest import hpo, spec_dict

from orchestrator.api import run
from orchestrator.practice.analyze import _boundary_warnings, _seed_warning, isolation
from orchestrator.spec import parse_spec

PNG = b"\x89PNG\r\n\x1a\n"


def _spec(**search):
    return parse_spec(spec_dict(search={"metric": "val_loss", "mode": "min", **search}))


def _trial(i, lr, hidden, loss):
    return {"trial_id": f"trial_{i:04d}", "config/lr": lr, "config/hidden": hidden, "best_val_loss": loss}


def test_isolation_takes_the_best_over_nuisance_and_splits_by_other_scientific_hyperparameters():
    spec = _spec(
        space={"lr": {"loguniform": [1e-4, 1e-1]}, "hidden": {"choice": [16, 32]}},
        roles={"hidden": "scientific"},
    )
    trials = [
        _trial(0, 0.001, 16, 0.9),
        _trial(1, 0.001, 16, 0.5),
        _trial(2, 0.001, 32, 0.4),
        _trial(3, 0.05, 32, 0.2),
    ]
    by_hidden = isolation(trials, spec, "hidden")
    assert by_hidden == {(): {16: 0.5, 32: 0.2}}  # lr is nuisance: best over it
    by_lr = isolation(trials, spec, "lr")
    assert set(by_lr) == {(16,), (32,)}  # hidden is scientific: a line per value
    assert sorted(by_lr[(16,)].values()) == [0.5] and sorted(by_lr[(32,)].values()) == [0.2, 0.4]


def test_boundary_warning_is_in_the_distributions_scale():
    spec = _spec(space={"lr": {"loguniform": [1e-4, 1e-1]}, "hidden": {"choice": [16, 32]}})
    near_top = [_trial(i, 0.08 if i == 0 else 0.001, 16, 0.1 if i == 0 else 0.5) for i in range(10)]
    [warning] = _boundary_warnings(near_top, spec)
    assert warning.startswith(
        "lr: the best trial (trial_0000, lr=0.08) and 0 of the next 0 sit in the upper 10%"
    )
    assert "log scale" in warning
    # 0.03 is at 83% of [1e-4, 1e-1] in log scale (near the top only on a linear axis): no warning
    assert _boundary_warnings([_trial(0, 0.03, 16, 0.1), _trial(1, 0.001, 16, 0.5)], spec) == []


def test_seed_noise_larger_than_the_gap_between_top_configs_is_flagged():
    spec = _spec(space={"lr": {"choice": [0.01, 0.02]}, "hidden": {"choice": [16, 32]}}, algorithm="grid")
    noisy = [_trial(0, 0.01, 16, 0.30), _trial(1, 0.01, 16, 0.40), _trial(2, 0.02, 16, 0.31)]
    assert "seed noise" in _seed_warning(noisy, spec)[0]
    calm = [_trial(0, 0.01, 16, 0.30), _trial(1, 0.01, 16, 0.301), _trial(2, 0.02, 16, 0.40)]
    assert _seed_warning(calm, spec) == []
    assert _seed_warning(noisy[:1] + noisy[2:], spec)[0].startswith(
        "note: no config ran with more than one seed"
    )


def test_roles_are_validated():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match="did you mean 'hidden'"):
        _spec(roles={"hiden": "scientific"})
    with pytest.raises(SpecError, match="roles.batch_size: 'scientific' does not match where it is"):
        _spec(roles={"batch_size": "scientific"})


@pytest.mark.slow
def test_analyze_writes_curves_isolation_plots_and_a_boundary_warning(ray_cluster, tmp_path, capsys):
    # lr's range ends at 3e-3, well below what Adam likes on digits: the best trial sits at its upper edge.
    # Quasi-random with 16 trials puts exactly one lr in each 1/16 of the (log) range, so one is in the top 10%.
    spec = parse_spec(
        spec_dict(
            storage=str(tmp_path / "runs"),
            scheduler={"type": "asha"},
            train={"max_epochs": 4},
            search={
                "algorithm": "quasirandom",
                "num_samples": 16,
                "max_concurrent": 2,
                "roles": {"hidden": "scientific"},
                "space": {"lr": {"loguniform": [1.0e-5, 3.0e-3]}, "hidden": {"choice": [16, 32]}},
            },
        )
    )
    summary = run(spec, progress=lambda line: None)
    out = tmp_path / "analysis"
    code, _, err = hpo(capsys, "analyze", summary.results_uri, "--out", str(out))
    assert code == 0, err[-2000:]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["importance.png", "isolation_hidden.png", "isolation_lr.png", "learning_curves.png"]
    assert all((out / p).read_bytes().startswith(PNG) and (out / p).stat().st_size > 5000 for p in pngs)
    report = (out / "report.txt").read_text()
    assert "isolation hidden (scientific)" in report and "isolation lr (nuisance)" in report
    assert "warning: lr: the best trial" in report and "sit in the upper 10% of the range" in report, report
    # lr spans 2.5 decades against 2 widths: fANOVA puts most of val_loss's variance on lr
    importance = next(line for line in report.splitlines() if line.startswith("importance for val_loss"))
    assert importance.startswith("importance for val_loss (fANOVA over 16 trials): lr "), importance
