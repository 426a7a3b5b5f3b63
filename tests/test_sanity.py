"""`hpo sanity`: the built-in workload passes every check; each planted bug is caught by the check meant for it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import hpo, spec_dict

from orchestrator.practice.sanity import CHECKS, sanity_checks
from orchestrator.spec import parse_spec

NAMES = ["loss_at_init", "overfit_one_batch", "input_independent", "gradient_dependency", "determinism"]


def _failed(workload: str, **search) -> set[str]:
    report = sanity_checks(parse_spec(spec_dict(workload=workload, **({"search": search} if search else {}))))
    assert [c.name for c in report.checks] == NAMES
    return {c.name for c in report.checks if c.judged and not c.passed}


def test_check_names_are_the_documented_ones():
    assert [c.__name__.removeprefix("check_") for c in CHECKS] == NAMES


@pytest.mark.parametrize(
    "workload, caught_by",
    [
        ("tests.workloads_for_tests:batch_mixing", "gradient_dependency"),
        ("tests.workloads_for_tests:shuffled_labels", "input_independent"),
        ("tests.workloads_for_tests:ignores_input", "input_independent"),
        ("tests.workloads_for_tests:unseeded_noise", "determinism"),
    ],
)
def test_each_planted_bug_is_caught_by_its_check(workload, caught_by):
    assert caught_by in _failed(workload)


def test_a_degenerate_zeroed_input_baseline_is_not_judged_and_not_passed():
    """Batch norm on all-zero batches makes the zeroed-input baseline's loss far above chance: comparing with
    it would pass any model, so the check says it could not judge (and the report does not fail for it)."""
    report = sanity_checks(parse_spec(spec_dict(workload="tests.workloads_for_tests:batchnorm_mlp")))
    check = {c.name: c for c in report.checks}["input_independent"]
    assert (check.passed, check.judged, check.status) == (False, False, "not judged")
    assert "over 3x chance" in check.detail and "cannot tell" in check.detail
    assert report.passed and "input_independent" not in report.failures()
    assert "not judged" in [c["status"] for c in report.to_json()["checks"]]


def test_workload_code_that_raises_is_one_line_naming_the_log(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(spec_dict(storage=str(tmp_path), workload="tests.workloads_for_tests:broken"))
    )
    code, out, err = hpo(capsys, "sanity", str(spec))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "sanity: loss_at_init: the workload's code raised RuntimeError: model exploded on purpose" in err
    log = err.split("full traceback: ")[1].rstrip(")\n")
    assert "Traceback" in open(log).read() and "_exploding_model" in open(log).read()


def test_regression_workload_passes():
    assert _failed("tests.workloads_for_tests:digit_value") == set()


def test_cli_passes_the_built_in_workload_and_writes_sanity_parquet(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(storage=str(tmp_path / "out"))))
    code, out, err = hpo(capsys, "sanity", str(spec), "--output", "json")
    assert code == 0, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["passed"] is True and [c["name"] for c in report["checks"]] == NAMES
    init = report["checks"][0]
    assert abs(init["measured"] - 2.302585) < 0.25 * 2.302585 and "-log(1/10)" in init["expected"]
    table = pq.read_table(f"{report['results_uri']}/sanity.parquet")
    assert table.column("check").to_pylist() == NAMES and all(table.column("passed").to_pylist())


def test_cli_exits_1_and_shows_the_failing_check(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(
            spec_dict(workload="tests.workloads_for_tests:batch_mixing", storage=str(tmp_path / "out"))
        )
    )
    code, out, err = hpo(capsys, "sanity", str(spec))
    assert code == 1, err[-2000:]
    line = next(line for line in out.splitlines() if line.startswith("gradient_dependency"))
    assert "FAIL" in line and "Traceback" not in err


def test_sanity_true_in_a_tuning_spec_refuses_to_search_when_a_check_fails(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(
            spec_dict(
                workload="tests.workloads_for_tests:unseeded_noise",
                sanity=True,
                storage=str(tmp_path / "out"),
            )
        )
    )
    code, out, err = hpo(capsys, "run", str(spec))
    assert code == 1, err[-2000:]
    assert "sanity checks failed, the search did not start: determinism" in err
    assert "Traceback" not in err
    [run_dir] = (tmp_path / "out" / "t-job").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "sanity.parquet"
    ]  # no trial ran, nothing else written


def test_a_workload_with_its_own_loop_is_checked_through_its_build_model_and_load_data():
    """digits-cnn trains itself, but gives build_model and load_data: sanity checks those (its config has no
    optimizer of the standard loop's; the checks bring their own)."""
    search = {"metric": "val_f1", "mode": "max", "space": {"width": {"choice": [8, 16]}}, "fixed": {}}
    assert _failed("digits-cnn", **search) == set()
