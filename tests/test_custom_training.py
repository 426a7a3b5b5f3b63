"""A user's own training loop (Workload.train) through TrainContext, without Ray: seeds, data order with
augmentation, reports, checkpoints that continue bit-identically, and the contract's errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import spec_dict, trial_plan
from contract import deterministic_reports

from orchestrator.errors import SpecError
from orchestrator.spec import parse_spec
from orchestrator.storage import LocalStore
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import TrainingError
from orchestrator.train.loop import run_training
from orchestrator.train.plan import TrialPlan
from orchestrator.workloads import Workload, WorkloadError, resolve_workload

CUSTOM = "tests.workloads_for_tests:custom_loop"
HP = {**resolve_workload(CUSTOM).defaults(), "loader_workers": 0}


def _plan(epochs=3, workload=CUSTOM) -> TrialPlan:
    metric = "val_f1" if workload.endswith(("custom_loop", "ported_loop")) else "acc"
    return trial_plan(epochs, workload=workload, metric=metric, mode="max")


class Rows:
    def __init__(self, root):
        self.rows: list[dict] = []
        self.checkpoints = TrialCheckpoints(LocalStore(root), "trial_0003", keep=2, mode="max")

    def report(self, row):
        self.rows.append(dict(row))

    @classmethod
    def of(cls, rows: list[dict]) -> Rows:
        made = cls.__new__(cls)
        made.rows = rows
        return made


def _train(root, hp=HP, seed=11, epochs=3, restore=False, workload=CUSTOM) -> Rows:
    rows = Rows(root)
    run_training(hp, seed, _plan(epochs, workload), rows, rows.checkpoints, restore=restore)
    return rows


def _metrics(rows: Rows) -> list[dict]:
    return deterministic_reports(rows.rows)


def _tensors(rows: Rows) -> dict:
    state = rows.checkpoints.load_latest()
    return {k: v for k, v in state["checkpoint"]["model"].items()}


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_same_seed_same_rows_and_tensors(tmp_path, hp):
    a, b, c = _train(tmp_path / "a", hp), _train(tmp_path / "b", hp), _train(tmp_path / "c", hp, seed=12)
    assert _metrics(a) == _metrics(b) and [r["epoch"] for r in a.rows] == [1, 2, 3]
    assert _same_tensors(_tensors(a), _tensors(b))
    assert [r["val_loss"] for r in a.rows] != [r["val_loss"] for r in c.rows]
    assert a.rows[-1]["val_f1"] > 0.5  # it learns


def check_a_failure_in_epoch_3_continues_from_epoch_2_bit_identically(tmp_path, hp):
    clean = _train(tmp_path / "clean", hp, epochs=4)
    marker = tmp_path / "failed"
    failing = {**hp, "fail_at_epoch": 2, "fail_marker": str(marker)}  # 0-based: the third epoch
    with pytest.raises(RuntimeError, match="failing once in epoch 2"):
        _train(tmp_path / "t", failing, epochs=4)
    assert marker.exists()
    first = TrialCheckpoints(LocalStore(tmp_path / "t"), "trial_0003", keep=2, mode="max")
    assert first.index()["latest"] == 2
    retry = _train(tmp_path / "t", failing, epochs=4, restore=True)
    # epochs 1-2 re-reported from the checkpoint's history (the driver keeps one row of each), then 3-4
    assert [r["epoch"] for r in retry.rows] == [1, 2, 3, 4]
    assert _metrics(retry) == _metrics(clean)
    assert _same_tensors(_tensors(retry), _tensors(clean))


def test_a_loop_on_the_module_level_api_trains_and_continues_as_one_on_ctx(tmp_path):
    """`from orchestrator import train` then train.report / get_checkpoint / get_context: the rows, the
    checkpoint tensors and a continuation after a failure are those of the same loop written on `ctx`."""
    ported = "tests.workloads_for_tests:ported_loop"
    a, b = _train(tmp_path / "ctx", HP), _train(tmp_path / "module", HP, workload=ported)
    assert _metrics(a) == _metrics(b) and _same_tensors(_tensors(a), _tensors(b))
    marker = tmp_path / "failed"
    failing = {**HP, "fail_at_epoch": 1, "fail_marker": str(marker)}
    with pytest.raises(RuntimeError, match="failing once in epoch 1"):
        _train(tmp_path / "t", failing, workload=ported)
    retry = _train(tmp_path / "t", failing, restore=True, workload=ported)
    assert _metrics(retry) == _metrics(a)


def test_the_module_level_api_outside_a_trial_says_where_it_works():
    from orchestrator import train

    with pytest.raises(RuntimeError, match="work inside a trial's train function only"):
        train.report({"val_loss": 1.0})
    with pytest.raises(RuntimeError, match="inside a trial's train function"):
        train.get_context()


def test_same_seed_same_rows_and_checkpoint_tensors(tmp_path):
    check_same_seed_same_rows_and_tensors(tmp_path, HP)


def test_a_failure_in_epoch_3_continues_from_epoch_2_bit_identically(tmp_path):
    check_a_failure_in_epoch_3_continues_from_epoch_2_bit_identically(tmp_path, HP)


def test_reproducing_a_stopped_trial_keeps_the_schedule_of_the_full_run(tmp_path):
    """ASHA stopped a trial after 1 of 3 epochs; its warmup + cosine schedule was laid out over 3 epochs.
    Reproduction runs it under the same max_epochs and stops at the same report, so its row is the stopped
    trial's; a run planned for 1 epoch (another schedule) gives another row."""
    from orchestrator.launch.launcher import InProcessLauncher, Rerun

    full = _train(tmp_path / "full", epochs=3)
    spec = parse_spec(
        spec_dict(
            workload=CUSTOM,
            search={"metric": "val_f1", "mode": "max", "space": {"lr": {"uniform": [0.1, 1]}}},
        )
    )
    launcher = InProcessLauncher(spec.train)
    again = launcher.reproduce(None, [Rerun("trial_0003", HP, 11, 1)], _plan(3), str(tmp_path / "r"))[
        "trial_0003"
    ]
    assert _metrics(Rows.of(again)) == _metrics(full)[:1]
    short = _train(tmp_path / "short", epochs=1)
    assert _metrics(short) != _metrics(full)[:1]


@pytest.mark.slow  # DataLoader worker processes
def test_with_two_loader_workers_same_rows_and_bit_identical_continuation(tmp_path):
    hp = {**HP, "loader_workers": 2}
    check_same_seed_same_rows_and_tensors(tmp_path / "same", hp)
    check_a_failure_in_epoch_3_continues_from_epoch_2_bit_identically(tmp_path / "retry", hp)


def test_the_checkpoint_holds_the_users_dict_and_every_rng(tmp_path):
    rows = _train(tmp_path, epochs=2)
    state = rows.checkpoints.load_latest()
    assert (
        set(state["checkpoint"]) == {"model", "opt", "schedule", "epoch"}
        and state["checkpoint"]["epoch"] == 1
    )
    assert state["iteration"] == 2 and state["loaders"] == [2] and state["seed"] == 11
    assert {"torch", "numpy", "python"} <= set(state["rng"][0])
    assert rows.rows[-1]["checkpoint"].endswith("epoch-0002.pt")


def _reporting(name: str, report) -> str:
    """A workload entry point in this module whose train calls `report(ctx)`."""
    globals()[name] = lambda: Workload(name=name, train=report, metrics={"val_loss": "min", "acc": "max"})
    return f"{__name__}:{name}"


@pytest.mark.parametrize(
    "report, message",
    [
        (lambda ctx: ctx.report({"val_loss": 1.0}), "report misses the declared metric 'acc'"),
        (
            lambda ctx: ctx.report({"val_loss": 1.0, "acc": 0.5, "f1": 0.1}),
            "gives the undeclared metric 'f1'",
        ),
        (
            lambda ctx: ctx.report({"val_loss": "low", "acc": 0.5}),
            "metric 'val_loss' is 'low'; give a real number",
        ),
        (lambda ctx: ctx.report({"val_loss": True, "acc": 0.5}), "metric 'val_loss' is True"),
        (lambda ctx: None, "reported no metrics"),
        (
            lambda ctx: ctx.report(
                {"val_loss": 1.0, "acc": 0.5}, checkpoint={"model": torch.nn.Linear(2, 2)}
            ),
            r"report: checkpoint\['model'\] holds a torch.nn.modules.linear.Linear, which a checkpoint cannot "
            r"hold .*report model.state_dict\(\)",
        ),
        (
            lambda ctx: ctx.report(
                {"val_loss": 1.0, "acc": 0.5}, checkpoint={"opt": {"hooks": [1, lambda step: step]}}
            ),
            r"checkpoint\['opt'\]\['hooks'\]\[1\] holds a builtins.function",
        ),
    ],
)
def test_a_report_that_breaks_the_declaration_fails_naming_the_key(tmp_path, report, message):
    with pytest.raises(TrainingError, match=message):
        _train(tmp_path, workload=_reporting(f"w{abs(hash(message))}", report))


def test_nan_is_recorded_as_it_is_and_never_the_best(tmp_path):
    values = iter([float("nan"), 0.3, float("inf"), 0.2])

    def train(ctx):
        for _ in range(4):
            ctx.report({"val_loss": 0.0, "acc": next(values)}, checkpoint={"w": torch.zeros(1)})

    rows = _train(tmp_path, epochs=4, workload=_reporting("nan_workload", train))
    assert math.isnan(rows.rows[0]["acc"]) and rows.rows[2]["acc"] == math.inf
    index = rows.checkpoints.index()
    assert index["best"] == 2  # NaN and inf are recorded, never the best


def test_tensor_and_numpy_values_are_numbers(tmp_path):
    import numpy as np

    train = lambda ctx: ctx.report({"val_loss": torch.tensor(0.5), "acc": np.float32(0.25)})  # noqa: E731
    rows = _train(tmp_path, epochs=1, workload=_reporting("tensor_values", train))
    assert (rows.rows[0]["val_loss"], rows.rows[0]["acc"]) == (0.5, 0.25)


def test_a_workload_says_what_it_is_missing():
    with pytest.raises(WorkloadError, match="give train .* or build_model and load_data"):
        Workload(name="empty")
    with pytest.raises(WorkloadError, match="metrics must map each reported metric to 'min' or 'max'"):
        Workload(name="bad", train=lambda ctx: None, metrics={"f1": "maximize"})
    custom = resolve_workload(CUSTOM)
    assert (
        not custom.uses_standard_loop and "lr" in custom.defaults() and "optimizer" not in custom.defaults()
    )
    assert dataclasses.replace(custom, name="x").metric_names[-1] == "val_f1"
    # sanity retrains, so it needs build_model and load_data; ensemble can predict from checkpoints instead
    assert custom.missing_for("sanity") == (
        "workload digits-custom-loop: sanity needs build_model and load_data (to retrain its models on the "
        "data); it gives no build_model or load_data"
    )
    assert custom.missing_for("ensemble") is None and custom.predict is not None
    no_predict = dataclasses.replace(custom, predict=None, build_model=lambda config: None)
    assert no_predict.missing_for("ensemble") == (
        "workload digits-custom-loop: ensemble needs predict(state, split), or build_model and load_data (to "
        "rebuild its models); it gives build_model but not load_data"
    )


def test_the_search_metric_must_be_declared():
    base = {
        "workload": CUSTOM,
        "search": {
            "metric": "val_f1",
            "mode": "max",
            "fixed": {},
            "space": {"lr": {"loguniform": [1e-3, 1e-2]}},
        },
    }
    assert parse_spec(spec_dict(**base)).search.metric == "val_f1"
    with pytest.raises(
        SpecError, match="search.metric: 'val_accuracy' is not reported by workload digits-custom-loop"
    ):
        parse_spec(spec_dict(**{**base, "search": {**base["search"], "metric": "val_accuracy"}}))


# --- on a real Ray: the same loop as a search's trials ---------------------------------------------------------
def _custom_spec(
    tmp_path,
    samples=2,
    algorithm="random",
    storage=None,
    scheduler=None,
    concurrency=None,
    fixed=None,
    metric="val_f1",
    mode="max",
    space=None,
    workload=CUSTOM,
    **train,
):
    extra = {"scheduler": scheduler} if scheduler else {}
    return parse_spec(
        spec_dict(
            workload=workload,
            storage=storage or str(tmp_path),
            **extra,
            search={
                "algorithm": algorithm,
                "num_samples": samples,
                "max_concurrent": concurrency or samples,
                "metric": metric,
                "mode": mode,
                "space": space or {"lr": {"loguniform": [1e-3, 1e-2]}, "width": {"choice": [4, 8]}},
                "fixed": {"batch_size": 64, **(fixed or {})},
            },
            train={"max_epochs": 2, **train},
        )
    )


@pytest.mark.slow
def test_a_search_over_a_custom_loop_with_loader_workers_obeys_the_results_contract(ray_cluster, tmp_path):
    from contract import check_contract

    from orchestrator.api import run

    spec = _custom_spec(tmp_path)
    summary = run(spec)
    rows, trials = check_contract(summary, spec)
    assert rows.column_names[2:5] == ["train_loss", "val_loss", "val_f1"]  # the declared metrics, in order
    assert summary.statuses == {"completed": 2} and summary.best["metric"] == max(rows["val_f1"].to_pylist())
    # no load_data: the ensemble predicts through the workload's predict(state, split) from each checkpoint
    from orchestrator.practice.ensemble import build_ensemble

    result = build_ensemble(summary.results_uri, top_k=2)
    assert sorted(m["trial_id"] for m in result.members) == sorted(trials["trial_id"].to_pylist())
    assert result.ensemble["test_accuracy"] > 0.5 and result.ensemble["val_loss"] > 0


@pytest.mark.slow
def test_a_custom_loop_that_raises_in_epoch_3_is_retried_by_tune_from_its_epoch_2_checkpoint(
    ray_cluster, tmp_path
):
    """Tune's own retry (train.max_retries): the loop raises once in its third epoch, after two reports; the retry
    continues from the epoch-2 checkpoint, and the rows and last checkpoint equal a rerun where nothing fails."""
    from contract import check_contract

    from orchestrator.api import run
    from orchestrator.execution.reproduce import reproduce

    marker = tmp_path / "failed"
    fail = {"fail_at_epoch": 2, "fail_marker": str(marker)}  # epochs are 0-based in the loop
    spec = _custom_spec(tmp_path, samples=1, fixed=fail, max_epochs=4, max_retries=1)
    summary = run(spec)
    assert marker.exists()  # it did fail once
    rows, trials = check_contract(summary, spec)
    assert trials["retries"].to_pylist() == [1] and trials["status"].to_pylist() == ["completed"]
    assert rows["attempt"].to_pylist() == [0, 0, 1, 1]  # epochs 1-2 before the failure, 3-4 by the retry
    again = reproduce(summary.results_uri, "trial_0000")  # from scratch; the marker exists, so nothing fails
    assert again.identical and again.iterations == 4 and again.checkpoint == "identical", again.describe()


@pytest.mark.slow
def test_two_worker_ddp_custom_loop_trials_run_on_one_warm_group_and_rerun_bit_identically(
    ray_cluster, tmp_path
):
    """2-worker DDP on CPU (gloo), each rank with 2 loader workers, two objectives with ASHA ranking its rungs by
    Pareto front and stopping trials at a report, over a conditional space (the optimizer with its own lr range,
    momentum for sgd only): every trial runs on the one warm worker group, a stopped trial
    leaves it whole for the next, and `hpo reproduce` reruns a trial that ran after a stopped one on a fresh
    group from scratch: every declared metric of every epoch and rank 0's last checkpoint are equal, bit for
    bit. The run's front is what the rows say (check_contract)."""
    import json
    from pathlib import Path

    from contract import check_contract

    from orchestrator.api import run
    from orchestrator.execution.reproduce import reproduce
    from orchestrator.results import load_trials

    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    spec = _custom_spec(
        tmp_path,
        samples=4,
        concurrency=1,
        scheduler=asha,
        workers=2,
        cpus_per_worker=0.5,
        metric=["val_f1", "val_loss"],
        mode=["max", "min"],
        workload="tests.workloads_for_tests:custom_loop_optimizers",
        space={  # a conditional space: momentum reaches only the sgd trials' loop
            "optimizer": {
                "choice": {
                    "adamw": {"lr": {"loguniform": [1e-3, 1e-2]}},
                    "sgd": {"lr": {"loguniform": [1e-2, 1e-1]}, "momentum": {"uniform": [0.8, 0.95]}},
                }
            },
            "width": {"choice": [4, 8]},
        },
    )
    summary = run(spec)
    check_contract(summary, spec)
    statuses = [t["status"] for t in load_trials(summary.results_uri).to_pylist()]
    assert "stopped_early" in statuses[:-1], statuses
    groups = json.loads((Path(summary.results_uri) / "run.json").read_text())["worker_groups"]
    assert groups == {"groups_started": 1, "groups_failed": 0, "trials": 4, "reused": 3}, groups
    after_stop = f"trial_{max(statuses.index('stopped_early') + 1, len(statuses) - 1):04d}"
    again = reproduce(summary.results_uri, after_stop)
    assert again.identical and again.metrics == ["train_loss", "val_loss", "val_f1"], again.describe()
    assert again.checkpoint == "identical", again.describe()  # rank 0's weights, optimizer and schedule


def test_code_that_raises_before_its_first_report_is_final_and_after_it_is_retryable(tmp_path):
    from orchestrator.train.context import FinalTrialError

    def early(ctx):
        raise ValueError("no such column 'label'")

    with pytest.raises(
        FinalTrialError, match=r"ValueError: no such column 'label', at .*test_custom_training.py"
    ):
        _train(tmp_path / "a", workload=_reporting("raises_early", early))

    def late(ctx):
        ctx.report({"val_loss": 1.0, "acc": 0.5})
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full") as info:
        _train(tmp_path / "b", workload=_reporting("raises_late", late))
    assert not isinstance(info.value, FinalTrialError)  # it trained and reported: a retry continues


def test_validate_builds_a_user_model_once_and_names_what_it_raised(tmp_path, cli):
    import yaml

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(spec_dict(workload="tests.workloads_for_tests:digit_value")))
    assert cli("validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_dict(workload="tests.workloads_for_tests:broken")))
    proc = cli("validate", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (
        proc.stderr
    )
    assert "build_model raised RuntimeError: model exploded on purpose at " in proc.stderr
    assert "workloads_for_tests.py" in proc.stderr


@pytest.mark.slow
def test_hyperopt_with_asha_on_s3_and_quasirandom_search_a_custom_loop(ray_cluster, s3, tmp_path):
    """TPE proposes, ASHA stops trials at a report, results and checkpoints go to SeaweedFS; quasirandom too."""
    import s3server
    from contract import check_contract

    from orchestrator.api import run

    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    uri = f"s3://{s3server.BUCKET}/custom-{tmp_path.name[-12:]}"
    spec = _custom_spec(
        tmp_path, samples=6, algorithm="hyperopt", storage=uri, scheduler=asha, concurrency=1, max_epochs=4
    )
    summary = run(spec)
    rows, trials = check_contract(summary, spec)
    assert summary.results_uri.startswith("s3://")
    assert "stopped_early" in trials["status"].to_pylist(), trials["status"].to_pylist()
    quasi = _custom_spec(tmp_path / "q", samples=3, algorithm="quasirandom", max_epochs=1)
    check_contract(run(quasi), quasi)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_on_a_gpu_the_context_device_is_the_local_ranks_and_bf16_autocasts(tmp_path):
    seen = {}

    def train(ctx):
        seen["device"] = str(ctx.device)
        with ctx.autocast():
            seen["dtype"] = (torch.ones(2, 2, device=ctx.device) @ torch.ones(2, 2, device=ctx.device)).dtype
        ctx.report({"val_loss": 0.0, "acc": 1.0})

    plan = dataclasses.replace(_plan(1, _reporting("gpu_device", train)), use_gpu=True, precision="bf16")
    rows = Rows(tmp_path)
    run_training(HP, 1, plan, rows, rows.checkpoints, restore=False, device="cuda:0")
    assert seen == {"device": "cuda:0", "dtype": torch.bfloat16}
    assert rows.rows[0]["acc"] == 1.0


@pytest.mark.parametrize("rank", [0, 1])
def test_a_tensor_loader_fetches_each_batch_whole_and_gives_default_collates_batches(
    tmp_path, monkeypatch, rank
):
    """prepare_data_loader over a TensorDataset indexes each tensor once per batch, not once per example and a
    stack; the batches (values, shapes, dtypes, order over two epochs) are those of the per-example path."""
    from torch.utils.data import DataLoader, TensorDataset

    from orchestrator.train.context import SeededSampler, TrainContext

    x, y = torch.randn(103, 5), torch.arange(103) % 7
    ctx = TrainContext(
        config=HP,
        seed=11,
        trial_id="trial_0003",
        max_epochs=2,
        metrics={"val_f1": "max"},
        search_metric="val_f1",
        reporter=Rows(tmp_path),
        checkpoints=Rows(tmp_path).checkpoints,
        restore=False,
        scratch_dir=str(tmp_path),
        rank=rank,
        world_size=2,
    )
    fast = ctx.prepare_data_loader(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    reference = DataLoader(
        TensorDataset(x, y), batch_size=8, sampler=SeededSampler(103, 11, rank, 2, shuffle=True)
    )
    expected = [[batch for batch in reference] for _ in range(2)]
    per_example = []
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: per_example.append(i))
    got = [[batch for batch in fast] for _ in range(2)]
    assert per_example == []
    assert isinstance(fast.dataset, TensorDataset) and len(fast) == len(reference) == 7
    for epoch_got, epoch_expected in zip(got, expected, strict=True):
        for (xb, yb), (xe, ye) in zip(epoch_got, epoch_expected, strict=True):
            assert torch.equal(xb, xe) and torch.equal(yb, ye)
            assert (xb.dtype, yb.dtype, xb.is_contiguous()) == (xe.dtype, ye.dtype, True)
    assert not torch.equal(got[0][0][1], got[1][0][1])  # each epoch reshuffles
