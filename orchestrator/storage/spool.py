"""Outage-proof writes: a Store wrapper that spools to local disk when the real store fails or is slow.

With `write_behind` (used for remote stores) every write lands in a spool directory on local disk and a
background thread uploads the spool in order, so training never waits on the network: a store that refuses,
or hangs, only delays uploads (retried with exponential backoff). Without it (local stores), writes go
straight to the inner store while it answers, and only a failed write (and every later one, to keep their
order) is spooled. Puts of unique names are idempotent and deletes are idempotent, so an item uploaded twice
(a crash between upload and unspooling) changes nothing: no row is lost or duplicated. The spool survives the
process: `drain_until` (behind `hpo results sync`, results/ops.py) uploads what a finished or killed process
left behind. A file lock serialises uploaders of one spool directory across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from orchestrator.storage.base import Store, StoreError, deadline_at, disk_full

SPOOL_ENV = "HPO_SPOOL_DIR"
STAGING = "ray"  # in a run's spool: Ray's own state when the store is remote (not a writer's spool)
DRIVER = "driver"  # in a run's spool: the driver's writes (each trial's are in a directory named after it)
_RETRYABLE = (StoreError, OSError)


def spool_root() -> Path:
    return Path(os.environ.get(SPOOL_ENV) or Path.home() / ".cache" / "hpo" / "spool")


def run_spool_dir(results_uri: str) -> Path:
    """The spool directory of one run (every writer of the run has a subdirectory)."""
    digest = hashlib.sha256(results_uri.encode()).hexdigest()[:16]
    return spool_root() / digest


class _Lock:
    """An exclusive, non-blocking lock on a spool directory, across processes (released if one dies)."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self._fh = open(directory / ".lock", "a+")
        self.held = False

    def __enter__(self):
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False  # another uploader is on it; the caller retries later
        return self

    def __exit__(self, *exc):
        if self.held:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


URI_FILE = "uri"  # in a run's spool: the results URI it belongs to (the directory's name is a digest of it)


def remove_run_spool(results_uri: str) -> bool:
    """Remove a run's spool once nothing in it waits (a healthy run leaves nothing behind). False if items
    still wait, which then stay for `hpo results sync`."""
    import shutil

    run_dir = run_spool_dir(results_uri)
    if pending_items(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def waiting_runs() -> list[tuple[str, int]]:
    """(results URI, items waiting) of every run with something left in this machine's spool."""
    root = spool_root()
    found = []
    for run_dir in sorted(root.iterdir()) if root.is_dir() else []:
        count = pending_items(run_dir) if run_dir.is_dir() else 0
        if count:
            uri_file = run_dir / URI_FILE
            uri = uri_file.read_text().strip() if uri_file.is_file() else f"(unknown run; spool {run_dir})"
            found.append((uri, count))
    return found


def _items(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.json") if p.name[0].isdigit())


def _upload_one(store: Store, meta_path: Path) -> None:
    """Apply one spooled operation to `store`, then forget it. Raises on store failure."""
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return  # another uploader finished it
    data_path = meta_path.with_suffix(".data")
    if meta["op"] == "put":
        try:
            data = data_path.read_bytes()
        except FileNotFoundError:
            return
        store.write_bytes(meta["rel"], data)
    else:
        store.delete(meta["rel"])
    meta_path.unlink(missing_ok=True)
    data_path.unlink(missing_ok=True)


def drain_directory(store: Store, directory: Path, deadline: float | None = None, on_failure=None) -> int:
    """Upload every spooled item of `directory` in order; stop at the first failure (`on_failure(error)` hears
    of it) or at `deadline` (time.monotonic()). Returns the items left (also those of a directory another
    uploader holds: no failure)."""
    if not directory.is_dir():
        return 0
    with _Lock(directory) as lock, deadline_at(deadline):  # the deadline bounds each upload too, mid-body
        if not lock.held:
            return len(_items(directory))
        for meta_path in _items(directory):
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                _upload_one(store, meta_path)
            except Exception as error:  # any failure (a store's bug included) leaves the item for a retry
                if on_failure is not None:
                    on_failure(error)
                break
        return len(_items(directory))


def pending_items(run_dir: Path) -> int:
    return sum(len(_items(d)) for d in writer_dirs(run_dir))


def writer_dirs(run_dir: Path) -> list[Path]:
    """The spool directories of a run's writers (the driver and each trial)."""
    return (
        sorted(d for d in run_dir.iterdir() if d.is_dir() and d.name != STAGING) if run_dir.is_dir() else []
    )


def drain_until(
    store: Store,
    directories: list[Path],
    timeout_s: float,
    *,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    on_failure=None,
) -> int:
    """Upload the spools in `directories`, retrying with backoff for up to `timeout_s` (0: one pass);
    `on_failure(error)` hears of each failed upload. Returns the items left."""
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    delay = backoff_s
    while True:
        left = sum(drain_directory(store, d, deadline, on_failure) for d in directories)
        if left == 0 or deadline is None or time.monotonic() >= deadline:
            return left
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(max_backoff_s, delay * 2)


class SpoolingStore(Store):
    """`inner` plus a local spool at `directory` for writes the inner store refuses."""

    def __init__(
        self,
        inner: Store,
        directory: Path,
        *,
        write_behind: bool = False,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ):
        self.inner, self.directory, self.write_behind = inner, Path(directory), write_behind
        self.uri = inner.uri
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._seq = 0
        self.outage_seen = False

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_lock", "_wake", "_thread"):
            state[key] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock, self._wake, self._thread = threading.Lock(), threading.Event(), None

    # -- Store ---------------------------------------------------------------------------------------------
    @property
    def remote(self) -> bool:  # type: ignore[override]  # the wrapped store's
        return self.inner.remote

    def preflight(self) -> str | None:
        return self.inner.preflight()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self._lock:
            if not self.write_behind and not self.pending():
                try:
                    self.inner.write_bytes(rel, data)
                    return
                except _RETRYABLE:
                    self.outage_seen = True
            self._spool({"op": "put", "rel": rel}, data)

    def delete(self, rel: str) -> None:
        with self._lock:
            if not self.write_behind and not self.pending():
                try:
                    self.inner.delete(rel)
                    return
                except _RETRYABLE:
                    self.outage_seen = True
            self._spool({"op": "delete", "rel": rel}, None)

    def _spooled(self, rel: str) -> Path | None:
        """The newest spooled operation on `rel`, if any (it is what the store will hold)."""
        for meta_path in reversed(_items(self.directory) if self.directory.is_dir() else []):
            try:
                if json.loads(meta_path.read_text())["rel"] == rel.strip("/"):
                    return meta_path
            except FileNotFoundError:
                continue
        return None

    def read_bytes(self, rel: str) -> bytes:
        meta_path = self._spooled(rel)
        if meta_path is not None:
            try:
                if json.loads(meta_path.read_text())["op"] == "delete":
                    raise FileNotFoundError(self.path(rel))
                return meta_path.with_suffix(".data").read_bytes()
            except FileNotFoundError:
                if meta_path.exists():
                    raise  # a spooled delete: the object is gone
                # uploaded (and unspooled) while we read: the store has it now
        return self.inner.read_bytes(rel)

    def exists(self, rel: str) -> bool:
        meta_path = self._spooled(rel)
        if meta_path is not None:
            try:
                return json.loads(meta_path.read_text())["op"] == "put"
            except FileNotFoundError:
                pass  # uploaded meanwhile
        return self.inner.exists(rel)

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        # Snapshot the spool first, then list the store: an item uploaded in between is then in the listing,
        # whereas the other order could miss it in both.
        base = prefix.strip("/")
        overlay: list[
            tuple[str, int | None]
        ] = []  # (rel, size) for a put, (rel, None) for a delete; in order
        for meta_path in _items(self.directory) if self.directory.is_dir() else []:
            try:
                meta = json.loads(meta_path.read_text())
                size = meta_path.with_suffix(".data").stat().st_size if meta["op"] == "put" else None
            except FileNotFoundError:
                continue  # uploaded already: the listing below has it
            if not base or meta["rel"] == base or meta["rel"].startswith(base + "/"):
                overlay.append((meta["rel"], size))
        found = self.inner.list_sizes(prefix)
        for rel, size in overlay:
            if size is None:
                found.pop(rel, None)
            else:
                found[rel] = size
        return dict(sorted(found.items()))

    def arrow_filesystem(self):
        return self.inner.arrow_filesystem()

    # -- spool ---------------------------------------------------------------------------------------------
    def pending(self) -> int:
        return len(_items(self.directory)) if self.directory.is_dir() else 0

    def _spool(self, meta: dict, data: bytes | None) -> None:
        if not self.directory.is_dir():
            uri_file = self.directory.parent / URI_FILE  # for `hpo results sync` without a URI
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                if not uri_file.exists():
                    uri_file.write_text(self.inner.uri)
            except OSError as error:
                uri_file.unlink(missing_ok=True)  # never half-written: `hpo results sync` reads it
                raise disk_full(self.directory, error) or error from None
        existing = _items(self.directory)
        self._seq = max(self._seq, int(existing[-1].stem) + 1 if existing else 0)
        stem = self.directory / f"{self._seq:012d}"
        self._seq += 1
        meta["rel"] = meta["rel"].strip("/")
        try:
            if data is not None:
                tmp = stem.with_suffix(".data.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, stem.with_suffix(".data"))
            tmp = stem.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, stem.with_suffix(".json"))  # the item exists once its metadata does
        except OSError as error:  # nothing half-written stays: the item was not spooled
            for leftover in (".data.tmp", ".data", ".json.tmp"):
                stem.with_suffix(leftover).unlink(missing_ok=True)
            raise disk_full(self.directory, error) or error from None
        self._start_uploader()

    def _start_uploader(self) -> None:  # called holding self._lock
        if self._thread is None:
            self._thread = threading.Thread(target=self._upload_loop, name="hpo-spool-uploader", daemon=True)
            self._thread.start()
        self._wake.set()

    def _upload_loop(self) -> None:
        delay = self.backoff_s
        while True:
            self._wake.clear()
            try:
                left = drain_directory(self.inner, self.directory)
            except Exception:  # the spool's own disk (full, removed): keep the thread, retry after a pause
                left = max(1, self.pending())
            with self._lock:  # deciding to stop under the writers' lock: no item can be stranded
                if (left == 0 and self.pending() == 0) or self._closed:
                    self._thread = None
                    return
            if left:
                self.outage_seen = True
                self._wake.wait(delay)
                delay = min(self.max_backoff_s, delay * 2)
            else:
                delay = self.backoff_s

    def close(self) -> None:
        """Stop the background uploader (after its current pass). What is still spooled stays on disk for
        `hpo results sync` or a later writer; a process that ends its run leaves no thread behind."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()

    def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the spool to empty (retrying now). True if nothing is left."""
        return (
            drain_until(
                self.inner,
                [self.directory],
                timeout_s,
                backoff_s=self.backoff_s,
                max_backoff_s=self.max_backoff_s,
            )
            == 0
        )
