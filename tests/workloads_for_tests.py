"""Small workloads the tests name as entry points ("tests.workloads_for_tests:NAME"); Ray workers import them
from the repository root, which is on their PYTHONPATH."""

from __future__ import annotations

import dataclasses

import torch

from orchestrator.workloads import Splits, Workload
from orchestrator.workloads.digits import digits_mlp, load_digits_splits
from orchestrator.workloads.digits_cnn import macro_f1


def _exploding_model(config):
    raise RuntimeError("model exploded on purpose")


def broken() -> Workload:
    return dataclasses.replace(digits_mlp(), name="broken", build_model=_exploding_model)


def _digit_value_splits(config) -> Splits:
    """Regression: predict the digit's value (0-9) as a float."""
    splits = load_digits_splits(config)
    return Splits(*((x, y.float()) for x, y in splits))


def _regressor(config):
    return torch.nn.Sequential(
        torch.nn.Linear(64, config["hidden"]), torch.nn.ReLU(), torch.nn.Linear(config["hidden"], 1)
    )


def digit_value() -> Workload:
    return Workload(
        name="digit-value",
        build_model=_regressor,
        load_data=_digit_value_splits,
        task="regression",
        hyperparameters={"hidden": 32},
    )


def _dies_once_model(config):
    """The digits MLP, whose process dies (os._exit: no exception, no cleanup, like a lost worker) on its
    `die_at_step`-th forward pass, once: the marker file says it already happened."""
    import os
    from pathlib import Path

    from orchestrator.workloads.digits import build_mlp

    model, marker, steps = build_mlp(config), Path(config["die_marker"]), [0]

    def hook(module, inputs):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() != 1:
            return  # under DDP only rank 1 dies: a worker lost while its peer waits in the all-reduce
        steps[0] += 1
        if steps[0] == config["die_at_step"] and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    if config["die_marker"]:
        model.register_forward_pre_hook(hook)
    return model


def dies_once() -> Workload:
    base = digits_mlp()
    return dataclasses.replace(
        base,
        name="dies-once",
        build_model=_dies_once_model,
        hyperparameters={**base.hyperparameters, "die_marker": "", "die_at_step": 25},
    )


# --- planted bugs for `hpo sanity`: each is the digits MLP with one classic mistake -------------------------
class _BatchMixer(torch.nn.Module):
    """Reshapes with a view where a transpose was meant: (B, F) -> (F, B) -> view (B, F) mixes examples."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.t().contiguous().view(x.shape[0], -1))


def batch_mixing() -> Workload:
    from orchestrator.workloads.digits import build_mlp

    return dataclasses.replace(
        digits_mlp(), name="batch-mixing", build_model=lambda c: _BatchMixer(build_mlp(c))
    )


def _shuffled_label_splits(config) -> Splits:
    """Labels permuted independently of the inputs (e.g. shuffling x and y with different generators)."""
    splits = load_digits_splits(config)
    gen = torch.Generator().manual_seed(0)
    return Splits(*((x, y[torch.randperm(len(y), generator=gen)]) for x, y in splits))


def shuffled_labels() -> Workload:
    return dataclasses.replace(digits_mlp(), name="shuffled-labels", load_data=_shuffled_label_splits)


class _IgnoresInput(torch.nn.Module):
    """Multiplies its input by zero on the way in (a mask or scale bug): the output depends on nothing."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x * 0)


def ignores_input() -> Workload:
    from orchestrator.workloads.digits import build_mlp

    return dataclasses.replace(
        digits_mlp(), name="ignores-input", build_model=lambda c: _IgnoresInput(build_mlp(c))
    )


class _UnseededNoise(torch.nn.Module):
    """Adds noise drawn from a generator seeded by the clock, not by the trial's seed."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        import time

        if self.training:
            gen = torch.Generator().manual_seed(time.perf_counter_ns())
            x = x + 0.1 * torch.randn(x.shape, generator=gen)
        return self.inner(x)


def unseeded_noise() -> Workload:
    from orchestrator.workloads.digits import build_mlp

    return dataclasses.replace(
        digits_mlp(), name="unseeded-noise", build_model=lambda c: _UnseededNoise(build_mlp(c))
    )


def _hangs_model(config):
    """The digits MLP, except that a model with `hidden: 16` hangs forever in its 30th forward pass (a stuck
    collective, a dead data loader): it stops reporting without failing."""
    import time

    from orchestrator.workloads.digits import build_mlp

    model, steps = build_mlp(config), [0]

    def hook(module, inputs):
        steps[0] += 1
        if steps[0] == 30 and int(config["hidden"]) == 16:
            time.sleep(10**6)

    model.register_forward_pre_hook(hook)
    return model


def hangs() -> Workload:
    return dataclasses.replace(digits_mlp(), name="hangs", build_model=_hangs_model)


# --- a user's own training loop (Workload.train) -------------------------------------------------------------
class _ShiftedDigits(torch.utils.data.Dataset):
    """8x8 digit images; in training, a random shift of up to one pixel and random noise, drawn from torch,
    NumPy and Python's RNGs in whichever process loads the example (DataLoader workers included)."""

    def __init__(self, x, y, augment: bool):
        self.x, self.y, self.augment = x.view(-1, 1, 8, 8), y, augment

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        image = self.x[i]
        if self.augment:
            import random

            import numpy as np

            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,)))
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
            image = image + float(np.random.normal(0, 0.05)) * random.random()
        return image, self.y[i]


class _SmallCnn(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3, padding=1)
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(width * 16, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(self.drop(x.flatten(1)))


def custom_train(ctx) -> None:
    """A plain PyTorch loop, as a user would write it: DataLoader with shuffle and workers, augmentation,
    AdamW, a warmup + cosine schedule stepped per batch, gradient clipping, macro-F1, its own checkpoint dict.
    Only ctx.* calls talk to the tuner. `fail_at_epoch` raises once (while `fail_marker` does not exist)."""
    import math
    import os

    import torch.distributed as dist
    from torch.utils.data import DataLoader

    cfg = ctx.config
    splits = load_digits_splits(cfg)
    model = ctx.prepare_model(_SmallCnn(cfg["width"]))
    raw = getattr(model, "module", model)  # without the DDP wrapper: what the checkpoint holds
    if cfg.get("optimizer", "adamw") == "sgd":  # momentum: only an sgd trial has it (a conditional space)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    train_loader = ctx.prepare_data_loader(
        DataLoader(
            _ShiftedDigits(*splits.train, augment=True),
            batch_size=cfg["batch_size"] // ctx.world_size,
            shuffle=True,
            num_workers=cfg["loader_workers"],
        )
    )
    steps = ctx.max_epochs * len(train_loader)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / steps)),
    )
    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        raw.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        schedule.load_state_dict(state["schedule"])
        start = state["epoch"] + 1
    x_val, y_val = splits.val
    for epoch in range(start, ctx.max_epochs):
        if epoch == cfg["fail_at_epoch"] and cfg["fail_marker"] and not os.path.exists(cfg["fail_marker"]):
            open(cfg["fail_marker"], "w").close()
            raise RuntimeError(f"failing once in epoch {epoch}, on purpose")
        model.train()
        total = torch.zeros(2, dtype=torch.float64)
        for images, labels in train_loader:
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            total += torch.tensor([float(loss.detach()) * len(labels), len(labels)], dtype=torch.float64)
        if ctx.world_size > 1:
            dist.all_reduce(total)
        model.eval()
        with torch.no_grad():
            out = model(x_val.view(-1, 1, 8, 8).to(ctx.device))
            val_loss = float(torch.nn.functional.cross_entropy(out, y_val.to(ctx.device)))
            f1 = macro_f1(out.argmax(-1).cpu(), y_val)
        ctx.report(
            {"train_loss": float(total[0] / total[1]), "val_loss": val_loss, "val_f1": f1},
            checkpoint={
                "model": raw.state_dict(),
                "opt": opt.state_dict(),
                "schedule": schedule.state_dict(),
                "epoch": epoch,
            },
        )


def custom_predict(state, split: str):
    """hpo ensemble without load_data: the checkpoint's weights on the digits' "val" or "test" split, as
    class probabilities and labels."""
    model = _SmallCnn(state.config["width"])
    model.load_state_dict(state["model"])
    model.eval()
    x, y = getattr(load_digits_splits(state.config), split)
    return torch.softmax(model(x.view(-1, 1, 8, 8)), dim=-1), y


def custom_loop() -> Workload:
    return Workload(
        name="digits-custom-loop",
        train=custom_train,
        predict=custom_predict,
        metrics={"train_loss": "min", "val_loss": "min", "val_f1": "max"},
        hyperparameters={
            "width": 8,
            "lr": 3e-3,
            "weight_decay": 0.01,
            "batch_size": 64,
            "loader_workers": 2,
            "fail_at_epoch": -1,
            "fail_marker": "",
        },
    )


def custom_loop_optimizers() -> Workload:
    """custom_loop with the optimizer searchable: adamw, or sgd with a momentum (for conditional spaces)."""
    base = custom_loop()
    return dataclasses.replace(
        base,
        name="digits-custom-loop-optimizers",
        hyperparameters={**base.hyperparameters, "optimizer": "adamw", "momentum": 0.9},
    )


def ported_train(_ctx) -> None:
    """custom_train as a Ray Train loop ported by changing its imports: every report, checkpoint and context
    read goes through orchestrator.train's module-level functions (`train.report`, `train.get_checkpoint`,
    `train.get_context`), none through the argument hpo passes."""
    from orchestrator import train

    class Module:  # what custom_train's `ctx.` reaches: the module, as `ray.train` would be
        def __getattr__(self, name):
            return getattr(train.get_context(), name)

        def report(self, metrics, checkpoint=None):
            train.report(metrics, checkpoint=checkpoint)

        def get_checkpoint(self):
            return train.get_checkpoint()

    custom_train(Module())


def ported_loop() -> Workload:
    return dataclasses.replace(custom_loop(), name="digits-ported-loop", train=ported_train)


def _batchnorm_mlp(config):
    hidden = config["hidden"]
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.Linear(hidden, hidden),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


def batchnorm_mlp() -> Workload:
    """A correct model whose zeroed-input baseline is degenerate: on all-zero batches the batch norms see no
    variance, and in eval mode what their running statistics lag by is divided by sqrt(eps)."""
    return dataclasses.replace(digits_mlp(), name="batchnorm-mlp", build_model=_batchnorm_mlp)


def _paced_train(ctx) -> None:
    """A trial of known length without compute to wait on: each epoch takes pace_s of wall time (a stand-in for
    training on hardware this machine lacks, so a budget test knows what each trial costs). It checkpoints every
    epoch and continues from a checkpoint, as a real loop does. With `hold_marker`, a trial numbered `hold_from`
    or later waits before its first epoch until that file exists (as held_synthetic's do). With `gate_marker`,
    every trial waits before epoch `gate_epoch` (0-based) until that file exists: a test acts on the trials
    while they stand there (drains their node), then lets them go on."""
    import os
    import time

    marker, number = ctx.config["hold_marker"], int(ctx.trial_id.rsplit("_", 1)[1])
    while marker and number >= ctx.config["hold_from"] and not os.path.exists(marker):
        time.sleep(0.05)
    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        start = state["epoch"] + 1
    gate = ctx.config["gate_marker"]
    for epoch in range(start, ctx.max_epochs):
        while gate and epoch >= ctx.config["gate_epoch"] and not os.path.exists(gate):
            time.sleep(0.05)
        time.sleep(ctx.config["pace_s"])
        loss = (ctx.config["x"] - 0.3) ** 2 + 1.0 / (epoch + 1)
        ctx.report({"loss": loss}, checkpoint={"epoch": epoch})


def paced() -> Workload:
    return Workload(
        name="paced",
        train=_paced_train,
        metrics={"loss": "min"},
        hyperparameters={
            "x": 0.5,
            "pace_s": 1.0,
            "hold_marker": "",
            "hold_from": 0,
            "gate_marker": "",
            "gate_epoch": 0,
        },
    )


def _held_train(ctx) -> None:
    """The synthetic workload's learning curves, except that a trial numbered `hold_from` or later waits before its
    first report until the file `hold_marker` exists. A test that kills a job once `hold_from` trials have
    finished then kills it mid-run however far its reading of the job's progress lags behind the job (on a loaded
    machine the last few fast trials used to finish first), and lets a later run through by creating the file."""
    import os
    import time

    from orchestrator.workloads.synthetic import train

    marker, number = ctx.config["hold_marker"], int(ctx.trial_id.rsplit("_", 1)[1])
    while marker and number >= ctx.config["hold_from"] and not os.path.exists(marker):
        time.sleep(0.05)
    train(ctx)


def held_synthetic() -> Workload:
    from orchestrator.workloads.synthetic import synthetic

    base = synthetic()
    return dataclasses.replace(
        base,
        name="held-synthetic",
        train=_held_train,
        hyperparameters={**base.hyperparameters, "hold_marker": "", "hold_from": 0},
    )


def _reports_epoch_train(ctx) -> None:
    """Ray Tune's habit: report the epoch too, a metric the workload never declared. Until the file named by
    `fixed_marker` exists (the test's stand-in for fixing the code), then it reports only what it declares."""
    import os

    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        start = state["epoch"] + 1
    for epoch in range(start, ctx.max_epochs):
        metrics = {"loss": (ctx.config["x"] - 0.3) ** 2 + 1.0 / (epoch + 1)}
        if not os.path.exists(ctx.config["fixed_marker"]):
            metrics["epoch"] = epoch
        ctx.report(metrics, checkpoint={"epoch": epoch})


def reports_epoch() -> Workload:
    return Workload(
        name="reports-epoch",
        train=_reports_epoch_train,
        metrics={"loss": "min"},
        hyperparameters={"x": 0.5, "fixed_marker": ""},
    )


def _fails_once_loudly_train(ctx) -> None:
    """Says a line on stderr each epoch (Ray relays it to the driver); trial_0000 raises once, in its second
    epoch, while the file `fail_marker` does not exist (it creates it), and is retried from its checkpoint."""
    import os
    import sys

    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        start = state["epoch"] + 1
    for epoch in range(start, ctx.max_epochs):
        print(f"{ctx.trial_id}: epoch {epoch}", file=sys.stderr, flush=True)
        marker = ctx.config["fail_marker"]
        if epoch == 1 and ctx.trial_id.endswith("_0000") and marker and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("failing once, on purpose")
        ctx.report({"loss": (ctx.config["x"] - 0.3) ** 2 + 1.0 / (epoch + 1)}, checkpoint={"epoch": epoch})


def fails_once_loudly() -> Workload:
    return Workload(
        name="fails-once-loudly",
        train=_fails_once_loudly_train,
        metrics={"loss": "min"},
        hyperparameters={"x": 0.5, "fail_marker": ""},
    )


def _branch_probe_train(ctx) -> None:
    """Reports whether `momentum` reached the loop (a conditional space gives it only to sgd trials), and a loss
    that depends on lr, and on momentum under sgd."""
    import math

    cfg = ctx.config
    given = "momentum" in cfg
    base = abs(math.log10(cfg["lr"]) + 2.5) + (abs(cfg["momentum"] - 0.9) if given else 0.3)
    for epoch in range(1, ctx.max_epochs + 1):
        ctx.report({"loss": base + 1.0 / epoch, "momentum_given": float(given)})


def branch_probe() -> Workload:
    return Workload(
        name="branch-probe",
        train=_branch_probe_train,
        metrics={"loss": "min", "momentum_given": "max"},
        hyperparameters={"optimizer": "adam", "lr": 1e-3, "momentum": 0.9},
    )


def _writes_pid_train(ctx) -> None:
    """Leaves a file named by its process id in the folder `pid_dir`: which process trained it."""
    import os
    import pathlib

    pathlib.Path(ctx.config["pid_dir"], str(os.getpid())).touch()
    for epoch in range(ctx.max_epochs):
        ctx.report({"loss": ctx.config["x"] + 1.0 / (epoch + 1)})


def writes_pid() -> Workload:
    return Workload(
        name="writes-pid",
        train=_writes_pid_train,
        metrics={"loss": "min"},
        hyperparameters={"x": 0.5, "pid_dir": ""},
    )


def _gpu_share_train(ctx) -> None:
    """Says which GPUs Ray gave its process (CUDA_VISIBLE_DEVICES) in a file of the folder `out_dir`, then
    waits, up to 60 s, until `together` trials have said so: it reports only once they all run at once."""
    import json
    import os
    import pathlib
    import time

    out = pathlib.Path(ctx.config["out_dir"])
    (out / f"{os.getpid()}.json").write_text(json.dumps({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.json"))) < ctx.config["together"] and time.monotonic() < deadline:
        time.sleep(0.1)
    together = len(list(out.glob("*.json"))) >= ctx.config["together"]
    for _epoch in range(ctx.max_epochs):
        ctx.report({"loss": 0.0 if together else 1.0})


def gpu_share() -> Workload:
    return Workload(
        name="gpu-share",
        train=_gpu_share_train,
        metrics={"loss": "min"},
        hyperparameters={"x": 0.5, "out_dir": "", "together": 1},
    )
