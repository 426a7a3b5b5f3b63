"""Built-in `charlm`: a character-level language model, trained by its own loop, on text that ships with Python.

The text is Python's own reference documentation as `pydoc` serves it (the `pydoc_data.topics` module of the
standard library; its first 150,000 characters): nothing is downloaded. It differs between Python versions, so its
SHA-256 is the `text_sha256` hyperparameter: recorded with every run (spec.yaml, each row's config), and a
trial refuses to train on a text with another hash (a resume or reproduce on a different Python).

The first 90% is for training, in non-overlapping windows of `seq_len` + 1 characters (shuffled through
ctx.prepare_data_loader), the last 10% for validation. A GRU (or several) reads `seq_len` characters and
predicts each next one; the metric is validation perplexity per character, exp(mean cross-entropy).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any

from orchestrator.workloads.base import Workload
from orchestrator.workloads.digits_cnn import warmup_cosine

VAL_FRACTION = 0.1
TEXT_CHARS = 150_000  # the first 150,000 characters: an epoch of a few seconds on one CPU core


@functools.lru_cache(maxsize=1)
def _text() -> tuple[str, str]:
    """(text, its SHA-256): the topics of Python's pydoc data in sorted order, the first TEXT_CHARS of them."""
    from pydoc_data import topics  # standard library, ~0.5 MB of English documentation

    text = "".join(topics.topics[name] for name in sorted(topics.topics))[:TEXT_CHARS]
    return text, hashlib.sha256(text.encode()).hexdigest()


def encoded(config: Mapping[str, Any]):
    """(train ids, val ids, vocabulary size) as int64 tensors; refuses a text whose hash is not the config's."""
    import torch  # heavy: only once data is loaded

    text, digest = _text()
    if config["text_sha256"] != digest:
        raise ValueError(
            f"this Python's pydoc text has SHA-256 {digest[:12]}..., the run used {config['text_sha256'][:12]}...: "
            "the same spec on another Python version trains on another text"
        )
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    split = int(len(ids) * (1 - VAL_FRACTION))
    return ids[:split], ids[split:], len(vocab)


class Windows:
    """A map-style Dataset: window i is characters [i*L, (i+1)*L + 1) of `ids`, as (input, next characters)."""

    def __init__(self, ids, seq_len: int):
        self.ids, self.seq_len = ids, seq_len

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.seq_len

    def __getitem__(self, i):
        if not 0 <= i < len(self):  # also ends iteration: slicing past the end would not
            raise IndexError(i)
        chunk = self.ids[i * self.seq_len : (i + 1) * self.seq_len + 1]
        return chunk[:-1], chunk[1:]


def build_model(config: Mapping[str, Any], vocab: int):
    from torch import nn  # heavy: only once a model is built

    class CharGru(nn.Module):
        def __init__(self):
            super().__init__()
            hidden, layers = int(config["hidden"]), int(config["layers"])
            self.embed = nn.Embedding(vocab, int(config["embed"]))
            self.rnn = nn.GRU(int(config["embed"]), hidden, num_layers=layers, batch_first=True)
            self.drop = nn.Dropout(float(config["dropout"]))
            self.head = nn.Linear(hidden, vocab)

        def forward(self, x):
            out, _ = self.rnn(self.embed(x))
            return self.head(self.drop(out))

    return CharGru()


def train(ctx) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    cfg = ctx.config
    train_ids, val_ids, vocab = encoded(cfg)
    model = ctx.prepare_model(build_model(cfg, vocab))
    weights = getattr(model, "module", model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    loader = ctx.prepare_data_loader(
        DataLoader(
            Windows(train_ids, cfg["seq_len"]), batch_size=cfg["batch_size"] // ctx.world_size, shuffle=True
        )
    )
    total = ctx.max_epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(warmup_cosine, 0, total))
    start = 0
    if (state := ctx.get_checkpoint()) is not None:
        weights.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        schedule.load_state_dict(state["schedule"])
        start = state["epoch"] + 1
    val = Windows(val_ids, cfg["seq_len"])
    val_x, val_y = (torch.stack(t) for t in zip(*(val[i] for i in range(len(val))), strict=True))
    for epoch in range(start, ctx.max_epochs):
        model.train()
        losses = []
        for x, y in loader:
            x, y = x.to(ctx.device), y.to(ctx.device)
            opt.zero_grad(set_to_none=True)
            with ctx.autocast():
                loss = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            schedule.step()
            losses.append(float(loss.detach()))
        model.eval()
        with torch.no_grad(), ctx.autocast():
            logits = weights(val_x.to(ctx.device)).float()
        val_loss = float(F.cross_entropy(logits.flatten(0, 1), val_y.to(ctx.device).flatten()))
        ctx.report(
            {"val_ppl": math.exp(val_loss), "val_loss": val_loss, "train_loss": sum(losses) / len(losses)},
            checkpoint={
                "model": weights.state_dict(),
                "opt": opt.state_dict(),
                "schedule": schedule.state_dict(),
                "epoch": epoch,
            },
        )


def charlm() -> Workload:
    """a character-level GRU language model on Python's own documentation text (pydoc), val perplexity"""
    return Workload(
        name="charlm",
        train=train,
        metrics={"val_ppl": "min", "val_loss": "min", "train_loss": "min"},
        hyperparameters={
            "lr": 1e-2,
            "weight_decay": 0.0,
            "batch_size": 16,
            "seq_len": 128,
            "embed": 32,
            "hidden": 128,
            "layers": 1,
            "dropout": 0.0,
            "grad_clip": 1.0,
            "text_sha256": _text()[1],
        },
    )
