"""The trial runner without Ray: determinism settings, seeds, data order, checkpoints that resume exactly."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import trial_plan
from contract import deterministic_reports

from orchestrator.storage import LocalStore
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.determinism import (
    CUBLAS_WORKSPACE_CONFIG,
    configure_determinism,
    derive_seed,
    epoch_permutation,
)
from orchestrator.train.loop import run_training
from orchestrator.workloads import TRAINING_HYPERPARAMETERS, resolve_workload

HP = {**TRAINING_HYPERPARAMETERS, "hidden": 32, "depth": 2, "dropout": 0.3, "lr": 0.01}


class MemoryReporter:
    """Keeps every report; its checkpoints live in a LocalStore under `root`."""

    def __init__(self, root, keep: int = 2):
        self.metrics: list[dict] = []
        self.checkpoints = TrialCheckpoints(LocalStore(root), "trial_0000", keep=keep, mode="min")

    def report(self, metrics):
        self.metrics.append(dict(metrics))


def run(hp, seed, plan, reporter, **kw):
    run_training(hp, seed, plan, reporter, reporter.checkpoints, **kw)


def test_same_seed_same_metrics_different_seed_different(tmp_path):
    a, b, c = (MemoryReporter(tmp_path / n) for n in "abc")
    run(HP, 11, trial_plan(), a)
    run(HP, 11, trial_plan(), b)
    run(HP, 12, trial_plan(), c)
    assert deterministic_reports(a.metrics) == deterministic_reports(b.metrics)
    assert [m["train_loss"] for m in a.metrics] != [m["train_loss"] for m in c.metrics]
    assert [m["epoch"] for m in a.metrics] == [1, 2, 3]


def test_checkpoint_holds_full_state_and_resumes_bit_identically(tmp_path):
    full = MemoryReporter(tmp_path / "full")
    run(HP, 5, trial_plan(epochs=4), full)
    # A trial that died after epoch 2: its store holds checkpoints up to epoch 2 only.
    partial = MemoryReporter(tmp_path / "partial")
    run(HP, 5, trial_plan(epochs=2), partial)
    state = partial.checkpoints.load_latest()
    assert {"checkpoint", "iteration", "rng", "config", "seed", "history", "loaders"} <= set(state)
    assert {"model", "optimizer", "schedule"} == set(state["checkpoint"])
    assert (
        state["iteration"] == 2
        and state["loaders"] == [2]
        and state["seed"] == 5
        and {"torch", "numpy", "python"} <= set(state["rng"][0])
    )
    resumed = MemoryReporter(tmp_path / "partial")  # same store: picks up the latest checkpoint
    run(HP, 5, trial_plan(epochs=4), resumed)
    # Epochs 1-2 again first, from the checkpoint's history (the run may have died before reporting or storing
    # them; the driver keeps one row per epoch), then 3 and 4 trained.
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3, 4]
    assert deterministic_reports(resumed.metrics) == deterministic_reports(
        full.metrics
    )  # bit-identical, dropout RNG included


def test_a_checkpoint_continues_only_the_trial_that_wrote_it(tmp_path):
    written = MemoryReporter(tmp_path / "t")
    run(HP, 5, trial_plan(epochs=2), written)
    other = MemoryReporter(tmp_path / "t")  # same trial name and store, another config: refused, not mixed
    with pytest.raises(
        RuntimeError,
        match=r"trial_0000: its checkpoint was written with lr=0.01, this attempt "
        r"has 0.02; refusing",
    ):
        run({**HP, "lr": 0.02}, 5, trial_plan(epochs=4), other)
    with pytest.raises(RuntimeError, match="written with seed=5, this attempt has 6"):
        run(HP, 6, trial_plan(epochs=4), MemoryReporter(tmp_path / "t"))
    assert other.metrics == []


def test_checkpoints_keep_latest_and_best(tmp_path):
    reporter = MemoryReporter(tmp_path, keep=1)
    run({**HP, "lr": 0.5}, 5, trial_plan(epochs=5), reporter)  # a high lr makes val_loss bounce
    index = reporter.checkpoints.index()
    losses = [m["val_loss"] for m in reporter.metrics]
    assert index["latest"] == 5 and index["best"] == 1 + losses.index(min(losses))
    kept = sorted(p.name for p in (tmp_path / "checkpoints" / "trial_0000").glob("epoch-*.pt"))
    assert kept == sorted({f"epoch-{index['latest']:04d}.pt", f"epoch-{index['best']:04d}.pt"})
    assert reporter.metrics[-1]["best_checkpoint"].endswith(f"epoch-{index['best']:04d}.pt")


def test_data_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_permutation(3, 1, 100), epoch_permutation(3, 1, 100))
    assert not torch.equal(epoch_permutation(3, 1, 100), epoch_permutation(3, 2, 100))
    assert not torch.equal(epoch_permutation(3, 1, 100), epoch_permutation(4, 1, 100))
    assert derive_seed(0, 1) != derive_seed(0, 2) and 0 <= derive_seed(2**40, 7) < 2**31


def test_sgd_optimizer_learns(tmp_path):
    reporter = MemoryReporter(tmp_path)
    run({**HP, "optimizer": "sgd", "momentum": 0.9, "lr": 0.05}, 1, trial_plan(epochs=3), reporter)
    assert reporter.metrics[-1]["val_accuracy"] > 0.8
    assert reporter.metrics[-1]["val_loss"] < reporter.metrics[0]["val_loss"]


def test_gpu_determinism_settings_are_applied(monkeypatch):
    """The GPU branch only sets flags and environment, so it is checked on CPU too."""
    for var in ("CUBLAS_WORKSPACE_CONFIG", "NCCL_ALGO", "NCCL_PROTO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    configure_determinism(use_gpu=True, threads=1)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
    assert os.environ["NCCL_ALGO"] == "Ring" and os.environ["NCCL_PROTO"] == "Simple"
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.utils.deterministic.fill_uninitialized_memory is False


def test_use_gpu_without_cuda_is_a_clear_error():
    from orchestrator.train.trial import device_for

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="use_gpu is true but CUDA is not available"):
        device_for(trial_plan(use_gpu=True), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_training_is_deterministic(tmp_path):
    a, b = MemoryReporter(tmp_path / "a"), MemoryReporter(tmp_path / "b")
    run(HP, 3, trial_plan(use_gpu=True), a, device="cuda:0")
    run(HP, 3, trial_plan(use_gpu=True), b, device="cuda:0")
    assert deterministic_reports(a.metrics) == deterministic_reports(b.metrics)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_a_trial_on_a_gpu_reports_what_its_gpu_did(tmp_path):
    """train/gpu_meter.py on a real device: each report carries the allocator's peak and NVML's utilization
    (nvidia-ml-py is a dependency), which the ledger keeps per trial."""
    reporter = MemoryReporter(tmp_path / "a")
    run(HP, 3, trial_plan(use_gpu=True), reporter, device="cuda:0")
    last = reporter.metrics[-1]
    assert last["gpu_mem_peak_gb"] > 0, last
    assert last["gpu_util"] is not None and 0 <= last["gpu_util"] <= 100, last


def test_workload_entry_point_errors(tmp_path, monkeypatch):
    from orchestrator.workloads import WorkloadError

    (tmp_path / "wl_bad.py").write_text(
        "def not_a_workload():\n    return 42\ndef raises():\n    raise ValueError('boom')\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkloadError, match="returned int, not an orchestrator.workloads.Workload"):
        resolve_workload("wl_bad:not_a_workload")
    with pytest.raises(WorkloadError, match="raised ValueError: boom"):
        resolve_workload("wl_bad:raises")
    with pytest.raises(WorkloadError, match="has no function 'missing'"):
        resolve_workload("wl_bad:missing")


def test_digits_are_scikit_learns_without_importing_it():
    """The digits workload reads scikit-learn's bundled CSV itself (importing sklearn.datasets costs every
    trial process ~2 s): the arrays are exactly load_digits'."""
    import numpy as np
    from sklearn.datasets import load_digits

    from orchestrator.workloads.digits import _load_digits

    x, y = _load_digits()
    expected_x, expected_y = load_digits(return_X_y=True)
    assert np.array_equal(x, expected_x) and np.array_equal(y, expected_y)
    assert x.dtype == expected_x.dtype and y.dtype == expected_y.dtype


def test_lr_schedules_warm_up_then_decay_to_zero():
    from orchestrator.train.loop import lr_factor

    total = 100
    for schedule in ("constant", "cosine", "linear"):
        ramp = [lr_factor(schedule, 0.1, s, total) for s in range(10)]
        assert ramp == [(s + 1) / 10 for s in range(10)], schedule
        assert lr_factor(schedule, 0.1, 10, total) == 1.0
    assert lr_factor("constant", 0.0, 99, total) == 1.0
    assert lr_factor("cosine", 0.0, 50, total) == pytest.approx(0.5)
    assert lr_factor("linear", 0.0, 75, total) == pytest.approx(0.25)
    assert 0 < lr_factor("cosine", 0.1, 99, total) < 0.001 and 0 < lr_factor("linear", 0.1, 99, total) < 0.02


class _Died(Exception):
    pass


class DiesAfter(MemoryReporter):
    """A trial whose process dies right after its n-th report (its checkpoint is already stored)."""

    def __init__(self, root, n: int):
        super().__init__(root)
        self.n = n

    def report(self, metrics):
        super().report(metrics)
        if len(self.metrics) == self.n:
            raise _Died


def test_adamw_cosine_warmup_and_clipping_learn_and_continue_bit_identically(tmp_path):
    """The schedule's position is part of the checkpoint: a trial that dies after epoch 2 of 4 continues on
    the same learning-rate curve as one that never died."""
    hp = {**HP, "optimizer": "adamw", "lr_schedule": "cosine", "warmup_frac": 0.2, "grad_clip": 0.5}
    full = MemoryReporter(tmp_path / "full")
    run(hp, 5, trial_plan(epochs=4), full)
    assert full.metrics[-1]["val_accuracy"] > 0.8
    with pytest.raises(_Died):
        run(hp, 5, trial_plan(epochs=4), DiesAfter(tmp_path / "died", 2), restore=False)
    resumed = MemoryReporter(tmp_path / "died")
    run(hp, 5, trial_plan(epochs=4), resumed)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3, 4]
    assert deterministic_reports(resumed.metrics) == deterministic_reports(full.metrics)
    constant = MemoryReporter(tmp_path / "constant")
    run({**hp, "lr_schedule": "constant"}, 5, trial_plan(epochs=4), constant)
    assert deterministic_reports(constant.metrics) != deterministic_reports(
        full.metrics
    )  # the schedule is applied


def test_reproduce_compares_the_last_checkpoint_tensor_by_tensor(tmp_path):
    from orchestrator.execution.reproduce import _compare_checkpoints

    a, b = MemoryReporter(tmp_path / "a"), MemoryReporter(tmp_path / "b")
    run(HP, 5, trial_plan(epochs=2), a)
    run(HP, 5, trial_plan(epochs=2), b)
    assert _compare_checkpoints(a.checkpoints, b.checkpoints, 2) == "identical"
    assert _compare_checkpoints(a.checkpoints, b.checkpoints, 3).startswith(
        "not compared (the stored one is of"
    )
    state = b.checkpoints.load_latest()
    name = next(iter(state["checkpoint"]["model"]))
    state["checkpoint"]["model"][name].view(-1)[0] += 1e-6
    b.checkpoints.save(2, state, None)
    assert _compare_checkpoints(a.checkpoints, b.checkpoints, 2) == f"differs at /model/{name}"


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before_and_continues_bit_identically(
    tmp_path, damage
):
    """A trial that dies after epoch 3 of 4 whose epoch-3 checkpoint is then cut short (or lost): the retry
    continues from epoch 2's, re-reports epochs 1-2, says which file it passed over with its first row, and ends
    with the rows of a trial that never died. It no longer fails for good blamed on the user's code."""
    full = MemoryReporter(tmp_path / "full")
    run(HP, 5, trial_plan(epochs=4), full)
    with pytest.raises(_Died):
        run(HP, 5, trial_plan(epochs=4), DiesAfter(tmp_path / "died", 3), restore=False)
    latest = tmp_path / "died" / "checkpoints" / "trial_0000" / "epoch-0003.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:100])
    else:
        latest.unlink()
    resumed = MemoryReporter(tmp_path / "died")
    run(HP, 5, trial_plan(epochs=4), resumed)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3, 4]
    note = resumed.metrics[0]["checkpoint_fallback"]
    assert "epoch-0003.pt" in note and note.endswith("continued from epoch 2")
    assert all("checkpoint_fallback" not in m for m in resumed.metrics[1:])  # said once
    assert deterministic_reports(
        [{k: v for k, v in m.items() if k != "checkpoint_fallback"} for m in resumed.metrics]
    ) == deterministic_reports(full.metrics)


def test_reproduce_never_calls_a_trial_identical_against_an_unreadable_stored_checkpoint(tmp_path):
    from orchestrator.execution.reproduce import _compare, _compare_checkpoints

    a, b = MemoryReporter(tmp_path / "a"), MemoryReporter(tmp_path / "b")
    run(HP, 5, trial_plan(epochs=2), a)
    run(HP, 5, trial_plan(epochs=2), b)
    stored = tmp_path / "a" / "checkpoints" / "trial_0000" / "epoch-0002.pt"
    stored.write_bytes(stored.read_bytes()[:50])
    verdict = _compare_checkpoints(a.checkpoints, b.checkpoints, 2)
    assert verdict.startswith("is unreadable (the stored one does not load"), verdict
    rows = [{"iteration": m["epoch"], "val_loss": m["val_loss"]} for m in a.metrics]
    result = _compare("trial_0000", rows, b.metrics, ["val_loss"], verdict)
    assert not result.identical
    assert "but the last checkpoint is unreadable (the stored one does not load" in result.describe()
