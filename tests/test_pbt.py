"""Population based training: its pure decisions (search/pbt.py), its refusals, and real runs: a PBT search at
max_concurrent 2 reruns to the same rows and lineage; a recipient's custom loop continues from its donor's
checkpoint (ctx.get_checkpoint), under its new hyperparameters; the standard loop trains under PBT."""

from __future__ import annotations

import json
import random

import pytest
from conftest import PBT, ROOT, in_trial_order, pbt_spec, spec_dict, spec_file
from contract import deterministic_rows

from orchestrator.api import run
from orchestrator.results import load_results, load_trials
from orchestrator.search.distributions import Choice, LogUniform, RandInt, Uniform
from orchestrator.search.pbt import exploits, explore, perturb, quantile_size, step_rng
from orchestrator.spec import SpecError, parse_spec
from orchestrator.workloads.anneal import advance


def _pbt_spec(tmp_path, **search) -> dict:
    return pbt_spec(str(tmp_path), **search)


def test_the_bottom_quantile_copies_the_top_and_ties_break_by_name():
    scores = {"t3": 0.5, "t1": 0.1, "t0": 0.9, "t2": 0.1, "t4": None, "t5": float("nan")}
    assert quantile_size(6, 0.25) == 2 and quantile_size(3, 0.5) == 1 and quantile_size(1, 0.5) == 0
    moves = exploits(scores, 0.25, step_rng(0, 0))
    assert set(moves) == {"t4", "t5"} and set(moves.values()) <= {"t1", "t2"}  # no score ranks last
    assert moves == exploits(dict(reversed(scores.items())), 0.25, step_rng(0, 0))  # order does not matter
    many = [exploits({f"t{i}": float(i) for i in range(8)}, 0.25, step_rng(s, 1)) for s in range(20)]
    assert {frozenset(m) for m in many} == {frozenset({"t6", "t7"})}
    assert {d for m in many for d in m.values()} == {"t0", "t1"}  # drawn from the whole top quantile


def test_explore_perturbs_within_range_keeps_the_branch_and_repeats_with_its_seed():
    rng = random.Random(0)
    assert perturb(Uniform(uniform=[0.0, 1.0]), 0.5, rng) in (0.4, 0.6)
    assert perturb(LogUniform(loguniform=[0.1, 1.0]), 1.0, random.Random(1)) in (0.8, 1.0)  # clipped at high
    assert perturb(RandInt(randint=[1, 10]), 5, rng) in (4, 6)
    assert perturb(Choice(choice=[16, 32, 64]), 32, rng) in (16, 64)
    spec = parse_spec(
        spec_dict(
            search={
                "space": {
                    "optimizer": {
                        "choice": {
                            "adam": {"lr": {"loguniform": [1e-4, 1e-2]}},
                            "sgd": {"lr": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.8, 0.99]}},
                        }
                    }
                }
            }
        )
    )
    space = spec.search.hyperparameters
    donor = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
    for seed in range(30):
        new = explore(donor, space, step_rng(seed, 0), resample_probability=0.5)
        assert new["optimizer"] == "sgd" and set(new) == set(donor)  # the checkpoint's optimizer stays
        assert 1e-3 <= new["lr"] <= 1e-1 and 0.8 <= new["momentum"] <= 0.99
        assert new == explore(donor, space, step_rng(seed, 0), resample_probability=0.5)


def test_the_learned_schedule_follows_the_lineage_through_each_exploit():
    """hpo analyze's PBT schedule of a trial: its donor's epochs before its exploit (recursively), then its own."""
    from orchestrator.practice.analyze import lineage

    def rows(trial, lrs, parent=None, at=None):
        return [
            {
                "trial_id": trial,
                "iteration": e,
                "config/lr": lr,
                "parent_trial": parent if at is not None and e > at else None,
                "exploited_at": at if at is not None and e > at else None,
            }
            for e, lr in enumerate(lrs, start=1)
        ]

    by_trial = {
        "a": rows("a", [0.4, 0.4, 0.4, 0.4, 0.4, 0.4]),
        "b": rows("b", [0.1, 0.1, 0.32, 0.32, 0.32, 0.32], parent="a", at=2),
        "c": rows("c", [0.01, 0.01, 0.01, 0.01, 0.26, 0.26], parent="b", at=4),
    }
    learned = lineage(by_trial, "c")
    assert [(r["trial_id"], r["iteration"], r["config/lr"]) for r in learned] == [
        ("a", 1, 0.4),
        ("a", 2, 0.4),
        ("b", 3, 0.32),
        ("b", 4, 0.32),
        ("c", 5, 0.26),
        ("c", 6, 0.26),
    ]
    assert lineage(by_trial, "a") == by_trial["a"]


def test_a_reproduction_runs_through_the_lineage_of_each_exploit():
    """hpo reproduce's plan for a PBT trial: its own segments, each after an exploit preceded by its donor's
    lineage up to that epoch (the donor's own earlier exploit included); only its own reports are compared."""
    from orchestrator.execution.reproduce import lineage_segments

    def rows(trial, seed, lrs, exploits=()):
        out = []
        for e, lr in enumerate(lrs, start=1):
            at = max((k for k, _ in exploits if k < e), default=None)
            parent = dict(exploits).get(at)
            out.append(
                {
                    "trial_id": trial,
                    "iteration": e,
                    "trial_seed": seed,
                    "config/lr": lr,
                    "parent_trial": parent,
                    "exploited_at": at,
                }
            )
        return out

    stored = {
        "a": rows("a", 1, [0.4] * 6),
        "b": rows("b", 2, [0.1, 0.1, 0.32, 0.32, 0.32, 0.32], exploits=[(2, "a")]),
        "c": rows("c", 3, [0.01, 0.01, 0.01, 0.01, 0.26, 0.26], exploits=[(4, "b")]),
    }
    plan = [(s.trial_id, s.first, s.last, s.hp["lr"], s.seed, s.keep) for s in lineage_segments(stored, "c")]
    assert plan == [
        ("c", 1, 4, 0.01, 3, True),  # its own first epochs, from scratch
        ("a", 1, 2, 0.4, 1, False),  # b's donor up to b's exploit
        ("b", 3, 4, 0.32, 2, False),  # b from a's state, up to c's exploit
        ("c", 5, 6, 0.26, 3, True),  # c from b's state
    ]
    segments = lineage_segments(stored, "c")
    assert (
        segments[2].start_from == segments[1].scratch_id and segments[3].start_from == segments[2].scratch_id
    )
    assert segments[-1].scratch_id == "c"  # where its last checkpoint is compared with the stored one


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"search": {"algorithm": "tpe"}},
            "scheduler.type: pbt draws each trial's next hyperparameters itself, and algorithm tpe proposes "
            "from results; use random, grid, quasirandom for its first population",
        ),
        (
            {"search": {"max_concurrent": 5}},
            "search.max_concurrent 5 is above the population of 4 trials; pbt runs at most its population",
        ),
        ({"search": {"num_samples": 1, "max_concurrent": 1}}, "pbt needs a population of at least 2 trials"),
        (
            {"search": {"metric": ["loss", "x"], "mode": ["min", "max"], "algorithm": "random"}},
            "scheduler.type: pbt ranks trials by one metric, and search.metric lists 2",
        ),
        (
            {"scheduler": {**PBT, "perturbation_interval": 6}},
            "scheduler.perturbation_interval 6 is not below train.max_epochs 6; PBT would never exploit",
        ),
        ({"scheduler": {**PBT, "quantile": 0.75}}, "scheduler.quantile"),
        ({"scheduler": {"type": "asha", "quantile": 0.2}}, "quantile applies only to type: pbt"),
    ],
)
def test_bad_pbt_specs_are_refused_in_one_line(tmp_path, changes, message):
    data = _pbt_spec(tmp_path)
    for section, values in changes.items():
        data[section] = {**data[section], **values} if section != "scheduler" else values
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.slow
def test_a_pbt_search_reruns_bit_identically_and_recipients_continue_their_donors(ray_cluster, tmp_path, cli):
    """Population 4 at max_concurrent 2 (two trials train at a time, every two epochs all wait for the step):
        two runs give the same rows, lineage and configs. A recipient's custom loop gets its donor's checkpoint
        from ctx.get_checkpoint(): its first x after the step is the donor's x advanced one epoch under the
        recipient's new lr and its own seed. hpo analyze draws the learned schedule; hpo reproduce of a trial that
    exploited another says in one line that it is not built."""
    spec = parse_spec(_pbt_spec(tmp_path / "a"))
    lines: list[str] = []
    first = run(spec, progress=lines.append)
    again = run(parse_spec(_pbt_spec(tmp_path / "b")), progress=lambda line: None)
    rows = in_trial_order(load_results(first.results_uri))
    assert deterministic_rows(rows) == deterministic_rows(in_trial_order(load_results(again.results_uri)))
    assert first.statuses == {"completed": 4} and rows.num_rows == 24
    assert any("] PBT step 1 at epoch 2: " in line for line in lines), lines
    by = {(r["trial_id"], r["iteration"]): r for r in rows.to_pylist()}
    moves = [r for r in rows.to_pylist() if r["parent_trial"] and r["iteration"] == r["exploited_at"] + 1]
    assert moves, "no trial exploited another"
    for row in moves:
        donor = by[(row["parent_trial"], row["exploited_at"])]
        before = by[(row["trial_id"], row["exploited_at"])]
        assert before["parent_trial"] != row["parent_trial"] or before["exploited_at"] != row["exploited_at"]
        expected = advance(donor["x"], row["config/lr"], 0.5, row["trial_seed"], row["iteration"])
        assert (row["x"], row["loss"]) == expected, (row, donor)
    trials = load_trials(first.results_uri).to_pylist()
    assert {t["trial_id"]: t["config/lr"] for t in trials} == {
        r["trial_id"]: r["config/lr"] for r in rows.to_pylist() if r["iteration"] == 6
    }  # a trial's record holds the config it ended with

    proc = cli("analyze", first.results_uri, "--out", str(tmp_path / "analysis"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "analysis" / "report.txt").read_text()
    assert "PBT schedule learned by the best trial" in report, report
    assert (tmp_path / "analysis" / "pbt_schedules.png").stat().st_size > 0

    # hpo reproduce of trials that exploited others: rerun through their lineages, bit for bit
    exploited = sorted({r["trial_id"] for r in moves})
    proc = cli("reproduce", first.results_uri, *exploited, "--output", "json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for line in proc.stdout.strip().splitlines():
        result = json.loads(line)
        assert result["identical"] is True and result["checkpoint"] == "identical", result

    shipped = json.loads(
        json.dumps(__import__("yaml").safe_load((ROOT / "jobs" / "digits-pbt.yaml").read_text()))
    )
    shipped["search"].update(num_samples=4, max_concurrent=2)
    shipped.update(storage=str(tmp_path / "shipped"), train={**shipped["train"], "max_epochs": 4})
    proc = cli("run", str(spec_file(tmp_path / "shipped.yaml", shipped)), "--output", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PBT step 1 at epoch 3: " in proc.stderr, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["statuses"] == {"completed": 4}
    # the standard loop sets the new hyperparameters on the donor's optimizer; its reproduction does the same
    recipients = sorted(
        {r["trial_id"] for r in load_results(summary["results_uri"]).to_pylist() if r["parent_trial"]}
    )
    assert recipients, "the shipped job's first step exploited nothing"
    proc = cli("reproduce", summary["results_uri"], recipients[0], "--output", "json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["identical"] and result["checkpoint"] == "identical", result


@pytest.mark.slow
def test_pbt_over_two_worker_ddp_trials_keeps_its_warm_group_and_reproduces_through_lineage(
    ray_cluster, tmp_path
):
    """2-worker DDP trials of a custom loop under PBT: a paused trial leaves its warm group whole for the next
    (one group trains every segment), every rank continues from what the chief adopted, and `hpo reproduce` of a
    trial that exploited another reruns its lineage on a fresh group, bit for bit (rank 0's last checkpoint
    too)."""
    from orchestrator.execution.reproduce import reproduce

    spec = parse_spec(
        spec_dict(
            name="pbt-ddp",
            workload="tests.workloads_for_tests:custom_loop",
            storage=str(tmp_path),
            search={
                "algorithm": "random",
                "num_samples": 4,
                "max_concurrent": 1,
                "metric": "val_loss",
                "mode": "min",
                "space": {"lr": {"loguniform": [1.0e-3, 3.0e-2]}},
                "fixed": {"batch_size": 64, "width": 4, "loader_workers": 0},
            },
            scheduler={**PBT, "perturbation_interval": 1},
            train={"max_epochs": 3, "workers": 2, "cpus_per_worker": 0.5},
        )
    )
    summary = run(spec, progress=lambda line: None)
    assert summary.statuses == {"completed": 4}
    info = json.loads((__import__("pathlib").Path(summary.results_uri) / "run.json").read_text())
    assert info["worker_groups"]["groups_started"] == 1 and info["worker_groups"]["groups_failed"] == 0, info
    rows = load_results(summary.results_uri).to_pylist()
    recipients = sorted({r["trial_id"] for r in rows if r["parent_trial"]})
    assert recipients, rows
    again = reproduce(summary.results_uri, recipients[-1])
    assert again.identical and again.checkpoint == "identical", again.describe()
