"""TrainContext: everything a training function sees of the tuner, on one worker or as one rank of DDP.

A workload's `train(ctx)` (or the standard loop, which is one such function) talks to hpo only through this
object. Its names follow Ray Train's (`report`, `get_checkpoint`, `prepare_model`, `prepare_data_loader`), so
a loop written for Ray Train or a Ray Tune function trainable ports by changing those calls and nothing else.

What it guarantees without the user doing anything:
- Python, NumPy and torch are seeded from the trial seed before `train` is called (the same on every rank,
  so initial weights agree); `prepare_model` then moves each rank onto its own stream (dropout differs).
- `prepare_data_loader` gives the loader a sampler whose order is a function of (trial seed, the loader's
  epoch) and shards it across ranks, and seeds its worker processes from (trial seed, rank, epoch): data
  order and augmentation repeat exactly, with `num_workers > 0` and after a restore.
- A report with a checkpoint saves, next to the user's dict, every rank's RNG state and every prepared
  loader's epoch; `get_checkpoint()` restores them, so the continued trial is bit-identical to one that never
  stopped.
"""

from __future__ import annotations

import contextlib
import numbers
import random
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from orchestrator.results.layout import ITERATION_KEY
from orchestrator.results.schema import CHECKPOINT_FALLBACK, REPORTED_AT, scoreable
from orchestrator.train.checkpoints import TrialCheckpoints, check_storable
from orchestrator.train.determinism import derive_seed, epoch_permutation, seed_everything
from orchestrator.train.exceptions import FinalTrialError, ReportError, TrainingError, TrialStopped
from orchestrator.train.gpu_meter import GpuMeter

CHECKPOINT_KEY = "checkpoint"  # where the user's dict sits in a stored checkpoint; the rest is hpo's
__all__ = [
    "TrainContext",
    "TrainingError",
    "FinalTrialError",
    "ReportError",
    "TrialStopped",
    "CHECKPOINT_KEY",
    "Reporter",
]


class Reporter(Protocol):
    """How reports reach Ray: tune.report in-process, the worker pool's relay under DDP, a list for reproduce."""

    def report(self, metrics: dict) -> None: ...


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _gather(value, world: int) -> list:
    """`value` from every rank, on every rank."""
    if world == 1:
        return [value]
    values: list = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values


class SeededSampler(Sampler[int]):
    """This rank's share of the dataset in an order fixed by (seed, epoch); every rank gets the same number
    of examples (the remainder of an uneven split is left out, as each epoch reshuffles it in)."""

    def __init__(self, size: int, seed: int, rank: int, world: int, shuffle: bool):
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch = 0  # epochs started; the first __iter__ is epoch 1

    def __len__(self) -> int:
        return self.size // self.world

    def __iter__(self):
        self.epoch += 1
        usable = (self.size // self.world) * self.world
        order = (
            epoch_permutation(self.seed, self.epoch, self.size) if self.shuffle else torch.arange(self.size)
        )
        return iter(order[:usable][self.rank :: self.world].tolist())


def _seed_worker(worker_id: int) -> None:
    """A DataLoader worker: Python and NumPy from torch's per-worker seed (torch seeds only itself)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class _BatchIndexed(TensorDataset):
    """The same tensors, fetched a batch at a time: one index per tensor instead of one per example and a
    stack. torch's DataLoader asks a dataset's __getitems__ for a batch's examples. This one answers with the
    whole batch as one item, which _the_batch unwraps. The values, shapes and dtypes are those default_collate
    gives; the standard loop's digits trials spent ~20% of their CPU on the per-example path."""

    def __getitems__(self, indices: list[int]) -> list[list[torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [[tensor[index] for tensor in self.tensors]]


def _the_batch(items: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    (batch,) = items
    return batch


class _SeededLoader(DataLoader):
    """A DataLoader whose worker seeds come from (trial seed, rank, epoch) at every epoch."""

    def __iter__(self):
        sampler = self.batch_sampler.sampler
        self.generator.manual_seed(derive_seed(sampler.seed, sampler.rank, sampler.epoch + 1, 0x5EED))
        return super().__iter__()


class TrainContext:
    """What a training function gets; see the module docstring. One per trial attempt and rank."""

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        seed: int,
        trial_id: str,
        max_epochs: int,
        metrics: Mapping[str, str],
        search_metric: str,
        reporter: Reporter,
        checkpoints: TrialCheckpoints,
        restore: bool,
        scratch_dir: str,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        precision: str = "fp32",
        gpu_meter: GpuMeter | None = None,
    ):
        self.config = dict(config)
        self.seed, self.trial_id, self.max_epochs = seed, trial_id, max_epochs
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.device = torch.device(device)
        self.scratch_dir, self.precision = scratch_dir, precision
        self._metrics, self._search_metric = dict(metrics), search_metric
        self._reporter, self._checkpoints, self._restore = reporter, checkpoints, restore
        self._iteration = 0
        self._history: list[dict] = []  # every report's metrics so far (stored with each checkpoint)
        self._samplers: list[SeededSampler] = []
        self._loader_epochs: list[int] = []  # restored epochs for loaders prepared after get_checkpoint
        self._restored = False
        self._fallback_note: str | None = None  # damaged checkpoints the restore passed over, said with a row
        self._last_report = time.perf_counter()
        self._gpu_meter = gpu_meter  # what the GPU did, sent with each report (not kept in the history)
        if not restore:
            checkpoints.start_fresh()

    @property
    def is_chief(self) -> bool:
        """Rank 0: the rank whose checkpoint is stored."""
        return self.rank == 0

    @property
    def iteration(self) -> int:
        """Reports so far (after a restore, including those before it)."""
        return self._iteration

    def autocast(self):
        """A context for the forward pass: bfloat16 autocast on a GPU when the spec says train.precision: bf16,
        else nothing (fp32)."""
        enabled = self.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this rank's device; wrapped in DistributedDataParallel when there are several ranks.
        Each rank then draws from its own random stream (dropout), derived from the trial seed."""
        model = model.to(self.device)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        seed_everything(derive_seed(self.seed, self.rank, 0xD0))
        return model

    def prepare_data_loader(self, loader: DataLoader) -> DataLoader:
        """The same loader with a seeded, sharded sampler (shuffled if `loader` shuffled) and seeded worker
        processes. Persistent workers are turned off: they would keep one seed for every epoch. A plain
        TensorDataset with default_collate and no workers is fetched a batch at a time (_BatchIndexed)."""
        if isinstance(loader.dataset, IterableDataset):
            raise TrainingError(
                "prepare_data_loader: an IterableDataset cannot be sharded or reshuffled by hpo; give a "
                "map-style Dataset, or shard and seed it yourself from ctx.rank, ctx.world_size and ctx.seed"
            )
        if loader.batch_size is None or not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
            raise TrainingError(
                "prepare_data_loader: give a DataLoader with batch_size and shuffle=True/False (a custom "
                "sampler or batch_sampler would decide the order hpo has to make reproducible)"
            )
        sampler = SeededSampler(
            len(loader.dataset),
            self.seed,
            self.rank,
            self.world_size,
            isinstance(loader.sampler, RandomSampler),
        )
        if len(self._samplers) < len(self._loader_epochs):
            sampler.epoch = self._loader_epochs[len(self._samplers)]
        self._samplers.append(sampler)
        workers = loader.num_workers
        dataset, collate = loader.dataset, loader.collate_fn
        if type(dataset) is TensorDataset and collate is default_collate and workers == 0:
            dataset, collate = _BatchIndexed(*dataset.tensors), _the_batch
        return _SeededLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=_chain(_seed_worker, loader.worker_init_fn),
            multiprocessing_context=loader.multiprocessing_context,
            generator=torch.Generator(),
            prefetch_factor=loader.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
        )

    def report(self, metrics: Mapping[str, Any], checkpoint: Mapping[str, Any] | None = None) -> None:
        """One iteration: the declared metrics (a value for each, real numbers), and optionally a checkpoint
        (a picklable dict of tensors and state dicts; the chief's is stored). Every rank must call it."""
        values = self._checked(metrics)
        if checkpoint is not None and self.is_chief:  # refused now, not at every later load
            check_storable(dict(checkpoint))
        self._iteration += 1
        now = time.perf_counter()
        row = {ITERATION_KEY: self._iteration, **values, "trial_seed": self.seed}
        row["epoch_time_s"], self._last_report = now - self._last_report, now
        row[REPORTED_AT] = time.time()
        self._history.append(dict(row))
        rngs = _gather(
            rng_state(), self.world_size
        )  # every rank's, so the chief's checkpoint restores them all
        if checkpoint is not None and self.is_chief:
            state = {
                CHECKPOINT_KEY: dict(checkpoint),
                "iteration": self._iteration,
                "rng": rngs,
                "loaders": [s.epoch for s in self._samplers],
                "config": self.config,
                "seed": self.seed,
                "history": self._history,
            }
            score = values.get(self._search_metric)
            index = self._checkpoints.save(self._iteration, state, score if scoreable(score) else None)
            row = {**row, **self._links(index)}
        self._send(row)

    def get_checkpoint(self) -> dict | None:
        """The dict given with the latest stored report when this attempt continues a trial (a retry, a
        resume, a reproduce from a checkpoint), else None. Restores every RNG and loader epoch with it, and
        re-reports the iterations up to it (the driver keeps the first row it sees of each)."""
        if not self._restore or self._restored:
            return None
        self._restored = True
        state, damaged = self._checkpoints.load_latest_intact(map_location=self.device)
        if damaged:  # said once, with the first row this attempt reports (re-reported or new)
            restart = f"continued from epoch {state['iteration']}" if state is not None else "started over"
            self._fallback_note = f"{'; '.join(damaged)}: {restart}"
        if state is None:
            return None
        self._check_same_trial(state)
        rngs = state["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self._loader_epochs = list(state.get("loaders", []))
        for sampler, epoch in zip(self._samplers, self._loader_epochs, strict=False):
            sampler.epoch = epoch
        self._iteration = state["iteration"]
        self._history = list(state["history"])
        links = self._links(self._checkpoints.index())
        for past in self._history:
            self._send({**past, **(links if past is self._history[-1] else {})})
        self._last_report = time.perf_counter()
        return state[CHECKPOINT_KEY]

    def _send(self, row: dict) -> None:
        if self._gpu_meter is not None:
            row = {**row, **self._gpu_meter.reading()}
        if self._fallback_note is not None:  # the driver says it once and counts it (run.json)
            row, self._fallback_note = {**row, CHECKPOINT_FALLBACK: self._fallback_note}, None
        self._reporter.report(row)

    def _links(self, index: dict) -> dict:
        return {
            "checkpoint": self._checkpoints.uri(index["latest"]),
            "best_checkpoint": self._checkpoints.uri(index["best"]),
        }

    def _checked(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(metrics, Mapping):
            raise ReportError(
                f"report: metrics must be a dict of metric -> number, got {type(metrics).__name__}"
            )
        declared = list(self._metrics)
        missing = [m for m in declared if m not in metrics]
        extra = [m for m in metrics if m not in self._metrics]
        if missing or extra:
            key = (missing or extra)[0]
            what = "misses the declared metric" if missing else "gives the undeclared metric"
            raise ReportError(
                f"report {what} {key!r}; the workload declares: {', '.join(declared)} "
                "(declare every reported metric in Workload(metrics={...}))"
            )
        values = {}
        for name in declared:
            value = metrics[name]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ReportError(f"report: metric {name!r} is {value!r}; give a real number")
            values[name] = float(value)  # NaN and inf are kept as they are, and never the best
        return values

    def _check_same_trial(self, state: dict) -> None:
        """A checkpoint continues only the trial that wrote it: same hyperparameters, same seed. Anything else
        (a resumed search proposing another config for this trial's name) would silently mix two trials."""
        if state.get("seed") == self.seed and state.get("config") == self.config:
            return
        stored = state.get("config") or {}
        differ = sorted(k for k in set(stored) | set(self.config) if stored.get(k) != self.config.get(k))
        key = differ[0] if differ else "seed"
        raise TrainingError(
            f"{self.trial_id}: its checkpoint was written with {key}="
            f"{stored.get(key, state.get('seed'))!r}, this attempt has "
            f"{self.config.get(key, self.seed)!r}; refusing to continue another trial's training"
        )


def _chain(first, second):
    if second is None:
        return first

    def both(worker_id: int) -> None:
        first(worker_id)
        second(worker_id)

    return both


# The context of the trial this process trains now (one at a time per process: a trial's own process, or a
# warm group's worker between trials). Set by the loop around the workload's train(ctx).
_current: TrainContext | None = None


@contextlib.contextmanager
def current(ctx: TrainContext):
    """While inside: `get_context()` is `ctx` (and `report`, `get_checkpoint` are its methods)."""
    global _current
    before, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = before


def get_context() -> TrainContext:
    """The TrainContext of the trial this code runs in, as `ray.train.get_context()` is Ray Train's: a Ray Train
    loop ports by changing its imports (`from orchestrator import train`)."""
    if _current is None:
        raise RuntimeError(
            "orchestrator.train.get_context(), report() and get_checkpoint() work inside a trial's train "
            "function only (hpo calls it with the same context as its argument)"
        )
    return _current


def report(metrics: Mapping[str, Any], checkpoint: Mapping[str, Any] | None = None) -> None:
    """`get_context().report(metrics, checkpoint)`: as `ray.train.report` in a Ray Train loop."""
    get_context().report(metrics, checkpoint)


def get_checkpoint() -> dict | None:
    """`get_context().get_checkpoint()`: as `ray.train.get_checkpoint` in a Ray Train loop."""
    return get_context().get_checkpoint()
