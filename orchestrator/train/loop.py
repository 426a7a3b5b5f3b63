"""The standard loop, and the one entry that runs any workload's training (run_training).

Every trial, on one worker or as one rank of DDP, goes through run_training: it applies the determinism
settings and the trial seed, builds the TrainContext and calls the workload's `train(ctx)`; a workload that
gives `build_model`/`load_data` instead is trained by `standard_loop`, which is just such a function. It owns
what those workloads do not: optimizer, batching, evaluation, metrics and checkpoint state.
"""

from __future__ import annotations

import functools
import math
import tempfile
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from orchestrator.errors import describe_failure
from orchestrator.storage import StoreError
from orchestrator.storage.base import DiskFull
from orchestrator.train.checkpoints import TrialCheckpoints
from orchestrator.train.context import FinalTrialError, Reporter, TrainContext, TrainingError, current
from orchestrator.train.determinism import configure_determinism, seed_everything
from orchestrator.train.exceptions import TrialDiskFull
from orchestrator.train.gpu_meter import GpuMeter
from orchestrator.train.plan import TrialPlan
from orchestrator.workloads import Workload, resolve_workload

EVAL_BATCH = 4096


@functools.lru_cache(maxsize=4)
def _workload(name: str) -> Workload:
    return resolve_workload(name)


def make_optimizer(hp: Mapping[str, Any], params) -> torch.optim.Optimizer:
    lr, wd = float(hp["lr"]), float(hp["weight_decay"])
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(hp["momentum"]), weight_decay=wd)
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def lr_factor(schedule: str, warmup_frac: float, step: int, total: int) -> float:
    """The learning rate's multiplier at `step` (0-based) of `total`: linear warmup over the first
    warmup_frac of the steps, then constant, cosine or linear decay to 0 at the last step."""
    warmup = math.ceil(warmup_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    done = (step - warmup) / max(1, total - warmup)  # 0 at the end of warmup, 1 after the last step
    return 0.5 * (1.0 + math.cos(math.pi * done)) if schedule == "cosine" else 1.0 - done


def make_schedule(hp: Mapping[str, Any], optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule, warmup_frac = hp["lr_schedule"], float(hp["warmup_frac"])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_factor, schedule, warmup_frac, total_steps)
    )


def _factor(schedule: str, warmup_frac: float, total: int, step: int) -> float:  # picklable, unlike a lambda
    return lr_factor(schedule, warmup_frac, step, total)


def retune(hp: Mapping[str, Any], optimizer, schedule) -> None:
    """After a restore, the optimizer's hyperparameters as `hp` says, where they differ from the restored state:
    a PBT step continues a donor's optimizer under new values (loading a state dict brings back the donor's).
    The schedule keeps its step and scales the new learning rate by its factor there."""
    lr, wd = float(hp["lr"]), float(hp["weight_decay"])
    momentum = float(hp["momentum"]) if hp["optimizer"] == "sgd" else None
    for i, group in enumerate(optimizer.param_groups):
        if schedule.base_lrs[i] != lr:
            schedule.base_lrs[i] = group["initial_lr"] = lr
            group["lr"] = lr * schedule.lr_lambdas[i](schedule.last_epoch)
        group["weight_decay"] = wd
        if momentum is not None:
            group["momentum"] = momentum


def task_loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if task == "classification" else F.mse_loss(out.squeeze(-1), y)


@torch.no_grad()
def evaluate(model, task: str, x: torch.Tensor, y: torch.Tensor, device) -> dict[str, float]:
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH].to(device), y[start : start + EVAL_BATCH].to(device)
        out = model(xb).float()
        total += float(task_loss(task, out, yb)) * len(xb)
        if task == "classification":
            correct += int((out.argmax(dim=-1) == yb).sum())
    metrics = {"loss": total / len(x)}
    if task == "classification":
        metrics["accuracy"] = correct / len(x)
    return metrics


def train_epoch(ctx: TrainContext, net, optimizer, schedule, task: str, batches, grad_clip: float) -> float:
    """One pass over `batches`; the mean training loss over every rank's examples."""
    net.train()
    total = torch.zeros(2, dtype=torch.float64)  # (sum of losses, examples) on this rank
    for xb, yb in batches:
        xb, yb = xb.to(ctx.device), yb.to(ctx.device)
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss = task_loss(task, net(xb).float(), yb)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        total += torch.tensor([float(loss.detach()) * len(xb), len(xb)], dtype=torch.float64)
    if ctx.world_size > 1:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


def standard_loop(workload: Workload, ctx: TrainContext) -> None:
    """hpo's loop for a build_model/load_data workload: batches through ctx.prepare_data_loader (data order a
    function of trial seed and epoch), the learning-rate schedule stepped per batch, a report and a checkpoint
    every epoch."""
    hp = ctx.config
    splits = workload.load_data(hp)
    (x_train, y_train), (x_val, y_val) = splits.train, splits.val
    model = workload.build_model(hp)
    net = ctx.prepare_model(model)  # `model` itself moved to the device; `net` DDP-wrapped under DDP
    optimizer = make_optimizer(hp, net.parameters())
    per_rank = max(1, int(hp["batch_size"]) // ctx.world_size)  # batch_size is the global batch
    batches = ctx.prepare_data_loader(
        DataLoader(TensorDataset(x_train, y_train), batch_size=per_rank, shuffle=True)
    )
    schedule = make_schedule(hp, optimizer, ctx.max_epochs * len(batches))
    state = ctx.get_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        retune(hp, optimizer, schedule)
    for _ in range(ctx.iteration + 1, ctx.max_epochs + 1):
        train_loss = train_epoch(
            ctx, net, optimizer, schedule, workload.task, batches, float(hp["grad_clip"])
        )
        with ctx.autocast():
            val = evaluate(model, workload.task, x_val, y_val, ctx.device)
        metrics = {"train_loss": train_loss, "val_loss": val["loss"]}
        if "accuracy" in val:
            metrics["val_accuracy"] = val["accuracy"]
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        }
        ctx.report(metrics, checkpoint=checkpoint)


def training_function(workload: Workload) -> Callable[[TrainContext], None]:
    """What trains this workload: its own `train`, or the standard loop."""
    return workload.train if workload.train is not None else functools.partial(standard_loop, workload)


def run_training(
    hp: Mapping[str, Any],
    seed: int,
    plan: TrialPlan,
    reporter: Reporter,
    checkpoints: TrialCheckpoints,
    *,
    restore: bool = True,
    rank: int = 0,
    world: int = 1,
    local_rank: int = 0,
    device: str = "cpu",
) -> None:
    """One attempt of one trial on this rank: determinism settings and the trial seed, then the workload's
    training function with its TrainContext. With `restore` the context's get_checkpoint() continues from the
    trial's latest checkpoint."""
    configure_determinism(use_gpu=plan.use_gpu, threads=max(1, math.floor(plan.cpus_per_worker)))
    workload = _workload(plan.workload)
    seed_everything(seed)  # the same on every rank: identical initial weights
    meter = GpuMeter(device)  # on a GPU: its utilization and peak memory go with every report
    with tempfile.TemporaryDirectory(prefix=f"hpo-{checkpoints.trial_id}-") as scratch, meter:
        ctx = TrainContext(
            config=hp,
            seed=seed,
            trial_id=checkpoints.trial_id,
            max_epochs=plan.max_epochs,
            metrics=workload.metrics,
            search_metric=plan.metric,
            reporter=reporter,
            checkpoints=checkpoints,
            restore=restore,
            scratch_dir=scratch,
            rank=rank,
            local_rank=local_rank,
            world_size=world,
            device=device,
            precision=plan.precision,
            gpu_meter=meter,
        )
        try:
            with current(ctx):  # orchestrator.train.report() and friends reach ctx
                training_function(workload)(ctx)
        except FinalTrialError:
            raise
        except TrainingError as error:  # the contract: the same code breaks it the same way every time
            raise FinalTrialError(f"{error} (not retried: the same code would do it again)") from error
        except DiskFull as error:  # no retry can write either: the driver stops the job
            raise TrialDiskFull(f"{checkpoints.trial_id}: {error}") from None
        except StoreError:  # storage, not the user's code (a checkpoint that could not be read): retried
            raise
        except Exception as error:
            if ctx.iteration > 0:  # it trained and reported: a retry continues from its checkpoint
                raise
            raise FinalTrialError(f"{_where(error)} (raised before the first report, not retried)") from error
    if ctx.iteration == 0:
        raise FinalTrialError(
            f"{checkpoints.trial_id}: the training function returned and reported no metrics"
        )


def _where(error: BaseException) -> str:
    """`Type: message, at file:line in function[, called from file:line in function]`: the user's frames of the
    error's traceback, innermost and outermost (errors.describe_failure)."""
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(error.__traceback__)]
    return describe_failure(f"{type(error).__name__}: {error}", frames)
