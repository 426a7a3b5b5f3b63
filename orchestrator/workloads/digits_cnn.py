"""Built-in `digits-cnn`: a user's own training loop, as one would write it for plain PyTorch.

The digits as 1x8x8 images in a Dataset with random-shift augmentation, a DataLoader with worker processes, a
small CNN, AdamW with linear warmup and cosine decay stepped per batch, gradient clipping, and macro-F1 as the
metric to maximise. Only the `ctx.` calls talk to the tuner (docs/custom-training.md). It also gives
`build_model` and `load_data`, so `hpo sanity` and `hpo ensemble` work on it (the checkpoint's "model" entry
holds the weights).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.workloads.base import Splits, Workload
from orchestrator.workloads.digits import NUM_CLASSES, SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, _load_digits

if TYPE_CHECKING:
    import numpy as np


@functools.lru_cache(maxsize=1)
def _image_arrays() -> tuple[np.ndarray, ...]:
    """The digits-mlp split (same seed, same fractions) as images scaled to [0, 1]: pixels keep their layout."""
    import numpy as np  # late: `hpo validate` imports every built-in workload, and numpy costs it ~70 ms

    x, y = _load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y[order].astype(np.int64)
    n_val, n_test = int(len(x) * VAL_FRACTION), int(len(x) * TEST_FRACTION)
    n_train = len(x) - n_val - n_test
    return (
        x[:n_train],
        y[:n_train],
        x[n_train : n_train + n_val],
        y[n_train : n_train + n_val],
        x[-n_test:],
        y[-n_test:],
    )


def load_images(config: Mapping[str, Any]) -> Splits:
    import torch  # heavy: only once data is loaded

    xt, yt, xv, yv, xs, ys = (torch.from_numpy(a) for a in _image_arrays())
    return Splits(train=(xt, yt), val=(xv, yv), test=(xs, ys))


def build_cnn(config: Mapping[str, Any]):
    from torch import nn  # heavy: only once a model is built

    width, dropout = int(config["width"]), float(config["dropout"])
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width * 16, NUM_CLASSES),
    )


class ShiftedDigits:
    """A map-style Dataset: image i, shifted by up to `shift` pixels each way (zeros fill in) when training."""

    def __init__(self, images, labels, shift: int):
        self.images, self.labels, self.shift = images, labels, shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        import torch

        image = self.images[i]
        if self.shift:
            dy, dx = (int(v) for v in torch.randint(-self.shift, self.shift + 1, (2,)))
            padded = torch.nn.functional.pad(image, (self.shift,) * 4)
            image = padded[:, self.shift + dy : self.shift + dy + 8, self.shift + dx : self.shift + dx + 8]
        return image, self.labels[i]


def macro_f1(predicted, target, classes: int = NUM_CLASSES) -> float:
    """The mean over classes of F1 (a class never predicted nor present counts as 0)."""
    scores = []
    for c in range(classes):
        tp = int(((predicted == c) & (target == c)).sum())
        fp = int(((predicted == c) & (target != c)).sum())
        fn = int(((predicted != c) & (target == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / classes


def warmup_cosine(warmup: int, total: int, step: int) -> float:
    """The learning rate's multiplier at `step`: linear warmup, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(ctx) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    cfg = ctx.config
    splits = load_images(cfg)
    model = ctx.prepare_model(build_cnn(cfg))
    weights = getattr(model, "module", model)  # without DDP's wrapper: what the checkpoint holds
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    loader = ctx.prepare_data_loader(
        DataLoader(
            ShiftedDigits(*splits.train, shift=cfg["shift"]),
            batch_size=max(1, cfg["batch_size"] // ctx.world_size),
            shuffle=True,
            num_workers=cfg["loader_workers"],
        )
    )
    total = ctx.max_epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(warmup_cosine, math.ceil(cfg["warmup_frac"] * total), total)
    )
    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        weights.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        schedule.load_state_dict(state["schedule"])
        start = state["epoch"] + 1
    x_val, y_val = (t.to(ctx.device) for t in splits.val)
    size_k = (
        sum(p.numel() for p in weights.parameters()) / 1000
    )  # the model's size: an objective to trade off
    for epoch in range(start, ctx.max_epochs):
        model.train()
        seen = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of losses, examples)
        for images, labels in loader:
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            opt.zero_grad(set_to_none=True)
            with ctx.autocast():
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            schedule.step()
            seen += torch.stack(
                [loss.detach().double() * len(labels), torch.tensor(len(labels), device=ctx.device)]
            )
        if ctx.world_size > 1:
            torch.distributed.all_reduce(seen)
        model.eval()
        with torch.no_grad(), ctx.autocast():
            logits = weights(x_val).float()
        ctx.report(
            {
                "val_f1": macro_f1(logits.argmax(-1).cpu(), y_val.cpu()),
                "val_loss": float(F.cross_entropy(logits, y_val)),
                "train_loss": float(seen[0] / seen[1]),
                "params_k": size_k,
            },
            checkpoint={
                "model": weights.state_dict(),
                "opt": opt.state_dict(),
                "schedule": schedule.state_dict(),
                "epoch": epoch,
            },
        )


def digits_cnn() -> Workload:
    """the digits as images: a CNN trained by its own loop (DataLoader, shift augmentation, AdamW, macro-F1)"""
    return Workload(
        name="digits-cnn",
        train=train,
        build_model=build_cnn,
        load_data=load_images,
        metrics={"val_f1": "max", "val_loss": "min", "train_loss": "min", "params_k": "min"},
        hyperparameters={
            "width": 32,
            "dropout": 0.1,
            "lr": 5e-3,
            "weight_decay": 1e-2,
            "batch_size": 64,
            "warmup_frac": 0.1,
            "grad_clip": 1.0,
            "shift": 1,
            "loader_workers": 2,
        },
    )
