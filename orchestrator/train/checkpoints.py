"""Trial checkpoints, written through the run's Store (so they are outage-proof like the result rows).

Layout under a run's results_uri: `checkpoints/<trial_id>/epoch-0007.pt` plus `index.json`, which names the
latest and the best epoch by the search metric. Each checkpoint holds the model and optimizer state, every
rank's RNG state and the epoch; data order is a function of (trial seed, epoch), so this is everything needed
to continue bit-identically. Ray never sees these files: they survive whatever Ray's own restore does.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import time
from collections import OrderedDict

import torch

from orchestrator.results.layout import adopted_checkpoint_file, checkpoint_file, checkpoint_index
from orchestrator.storage import Store, StoreError
from orchestrator.train.exceptions import ReportError, UnsafeCheckpoint


class TrialCheckpoints:
    def __init__(self, store: Store, trial_id: str, *, keep: int, mode: str):
        self.store, self.trial_id, self.keep, self.mode = store, trial_id, max(1, keep), mode
        self._index: dict | None = None

    def start_fresh(self) -> None:
        """Begin an empty index without reading the store (a fresh trial need not wait for a slow store)."""
        self._index = {"epochs": {}, "latest": None, "best": None}

    def _epoch_file(self, epoch: int) -> str:
        return checkpoint_file(self.trial_id, epoch)

    def index(self, *, patience_s: float = 300.0) -> dict:
        """The trial's checkpoint index (only retries read it: first attempts call start_fresh). A retry needs
        its checkpoint, so while the store is unreachable we wait (up to `patience_s`) rather than start over."""
        deadline, delay = time.monotonic() + patience_s, 0.5
        while self._index is None:
            try:
                self._index = json.loads(self.store.read_bytes(checkpoint_index(self.trial_id)))
            except FileNotFoundError:
                self._index = {"epochs": {}, "latest": None, "best": None}
            except StoreError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(10.0, delay * 2)
        return self._index

    def uri(self, epoch: int | None) -> str | None:
        return None if epoch is None else self.store.path(self._epoch_file(epoch))

    def save(self, epoch: int, state: dict, score: float | None) -> dict:
        """Write epoch `epoch`; keep the latest, the best and the most recent up to `keep`. Returns the index."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.store.write_bytes(self._epoch_file(epoch), buffer.getvalue())
        index = self.index()
        index["epochs"][str(epoch)] = score
        index["latest"] = epoch
        scored = [(s, int(e)) for e, s in index["epochs"].items() if s is not None]
        if scored:
            pick = min if self.mode == "min" else max
            best_score = pick(s for s, _ in scored)
            index["best"] = min(e for s, e in scored if s == best_score)  # earliest of equals
        keep = {epoch, index["best"]} | set(sorted(int(e) for e in index["epochs"])[-self.keep :])
        for old in [int(e) for e in index["epochs"] if int(e) not in keep]:
            del index["epochs"][str(old)]
            self.store.delete(self._epoch_file(old))
        self.store.write_bytes(checkpoint_index(self.trial_id), json.dumps(index).encode())
        return index

    def load_latest(self, map_location="cpu") -> dict | None:
        """The latest checkpoint's state, or None if this trial has none."""
        return self._load(self.index()["latest"], map_location)

    def load_latest_intact(self, map_location="cpu") -> tuple[dict | None, list[str]]:
        """The latest checkpoint that loads, and one line for each later one that did not (cut short, garbage,
        gone): a trial continues from the epoch before a damaged file instead of failing for good, and re-reports
        the epochs after it. (None, lines) if none loads: the trial starts over. A checkpoint that would run code
        is refused, never passed over; a store that does not answer is its own error (the attempt is retried)."""
        index = self.index()
        kept = {int(e) for e in index["epochs"]}
        if index["latest"] is not None:
            kept.add(index["latest"])
        epochs = sorted(kept, reverse=True)
        damaged: list[str] = []
        for epoch in epochs:
            try:
                return self._load(epoch, map_location), damaged
            except (UnsafeCheckpoint, StoreError):
                raise
            except FileNotFoundError:
                damaged.append(f"{self._epoch_file(epoch)} is missing")
            except Exception as error:  # torch's errors for a cut-short or garbage file have no common type
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
                damaged.append(f"{self._epoch_file(epoch)} does not load ({type(error).__name__}: {reason})")
        return None, damaged

    def load_best(self, map_location="cpu") -> dict | None:
        """The checkpoint with the best search metric (the earliest of equals), or None."""
        return self._load(self.index()["best"], map_location)

    def adopt(self, epoch: int, *, donor: str, config: dict, seed: int, metric: str) -> bool:
        """PBT's exploit, on this trial's side: make the donor's checkpoint of `epoch`, which the driver put at
        adopted_checkpoint_file, this trial's own checkpoint of that epoch: the donor's weights, optimizer and
        RNG state, under this trial's new config and seed and with this trial's own history of reports (what
        it re-reports after a restore). False if there is nothing to adopt (adopted already: a retry)."""
        source = adopted_checkpoint_file(self.trial_id, epoch)
        if not self.store.exists(source):
            return False
        state = load_as_data(self.store.read_bytes(source), self.store.path(source))
        score = state["history"][-1].get(metric)  # the donor's, at that epoch: what the weights score
        own = self._load(self.index()["latest"], "cpu")
        state.update(config=dict(config), seed=seed, history=own["history"] if own else state["history"])
        index = self.save(epoch, state, score if isinstance(score, float) and math.isfinite(score) else None)
        index["adopted"] = {"epoch": epoch, "donor": donor}  # a resumed driver must not copy it again
        self.store.write_bytes(checkpoint_index(self.trial_id), json.dumps(index).encode())
        self.store.delete(source)
        return True

    def _load(self, epoch: int | None, map_location) -> dict | None:
        if epoch is None:
            return None
        data = self.store.read_bytes(self._epoch_file(epoch))
        return load_as_data(data, self.uri(epoch), map_location)


def _numpy_rebuilders() -> list:
    """numpy's array, scalar and dtype rebuilders: they make data, never call code. Every checkpoint's RNG
    states hold numpy arrays (np.random.get_state), and user checkpoints often hold numpy values."""
    import numpy as np

    dtypes = [c for c in vars(np.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    return [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def load_as_data(data: bytes, where: str | None, map_location="cpu"):
    """A checkpoint's contents, unpickled as data only (torch's weights_only: tensors, numbers, strings, lists,
    dicts, numpy arrays). Anyone who can write to a shared bucket could otherwise put an object there whose
    unpickling runs code on every machine that resumes, reproduces or ensembles from it."""
    try:
        with torch.serialization.safe_globals(_numpy_rebuilders()):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"an object of {found.group(1)}" if found else "something other than data"
        raise UnsafeCheckpoint(
            f"checkpoint {where}: holds {what}, which only running code could load; hpo loads checkpoints as "
            "data (tensors, numbers, strings, lists, dicts, numpy arrays): store state_dict()s, not objects"
        ) from None


_LEAVES = (bool, int, float, complex, str, bytes, type(None))


def check_storable(checkpoint, path: str = "checkpoint") -> None:
    """ReportError naming the first value of a reported checkpoint that load_as_data would refuse (an object:
    a model, an optimizer, a lambda, a class of the user's), so that it is refused when reported, in one line,
    rather than stored and refused at every later load. The common values are checked by type; anything else
    is saved and loaded back as data, which is the final word."""
    import numpy as np

    pending = [(path, checkpoint)]
    while pending:
        where, value = pending.pop()
        kind = type(value)
        if kind in _LEAVES or kind in (
            torch.Tensor,
            torch.nn.Parameter,
            torch.dtype,
            torch.device,
            torch.Size,
        ):
            continue
        if isinstance(value, np.ndarray | np.generic) and value.dtype != object:
            continue
        if kind in (dict, OrderedDict) and all(type(k) in _LEAVES for k in value):
            pending += [(f"{where}[{k!r}]", v) for k, v in value.items()]
            continue
        if kind in (list, tuple):
            pending += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            continue
        buffer = io.BytesIO()
        try:
            torch.save(value, buffer)
            load_as_data(buffer.getvalue(), where)
        except Exception:
            raise ReportError(
                f"report: {where} holds a {kind.__module__}.{kind.__qualname__}, which a checkpoint cannot "
                "hold (it stores data: tensors, numbers, strings, lists, dicts, numpy arrays; report "
                "model.state_dict() and optimizer.state_dict(), not the objects)"
            ) from None
