"""The storage interface: a handful of operations on paths relative to a root URI.

Everything a run writes goes through a Store, so each implementation only has to pass the same contract
tests. Writes are atomic: a reader sees the old object or the new one, never half of one. A Store class
registers the URI scheme it serves (storage/__init__.py keeps the registry), says whether it is `remote`
(reached over a network: writes go behind a local spool) and checks, before a run starts, that it can be
written (`preflight`).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar


class StoreError(OSError):
    """A storage operation failed; the message names the URI."""


class DiskFull(StoreError):
    """A local disk (a run's folder or its spool) has no space left; the message names the disk."""


def disk_full(path, error: OSError) -> DiskFull | None:
    """DiskFull naming `path` and the mount it is on, if `error` says a disk is full (or over quota); else None."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    mount = os.path.abspath(path)
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    return DiskFull(f"no space left on the disk mounted at {mount} (writing {path})")


RESERVE_ENV = "HPO_DISK_RESERVE_BYTES"


class DiskReserve:
    """A hidden file of HPO_DISK_RESERVE_BYTES (1 MiB) on each local disk a run writes to, made when the run starts
    and deleted when it ends: a run that filled its disk then has room for its last writes (the rows it holds,
    trials.parquet, run.json saying why it ended) instead of leaving run.json `running`."""

    NAME = ".hpo-disk-reserve"

    def __init__(self, directories):
        self.size = int(os.environ.get(RESERVE_ENV, str(1 << 20)))
        self.files = []
        for directory in directories:
            path = Path(directory) / self.NAME
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(b"\0" * self.size)
                self.files.append(path)
            except (
                OSError
            ):  # already too full for it: the run finds out at its first write, as it would anyway
                path.unlink(missing_ok=True)

    def release(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


_deadline = threading.local()  # per thread: the spool's uploader keeps its own


@contextmanager
def deadline_at(when: float | None):
    """Within the block, no storage request of this thread may run past `when` (time.monotonic()); None adds
    no limit. Nested deadlines keep the earlier one. A remote store bounds each request by `time_left`."""
    before = getattr(_deadline, "at", None)
    if when is not None:
        _deadline.at = when if before is None else min(before, when)
    try:
        yield
    finally:
        _deadline.at = before


COMMAND_DEADLINE_ENV = "HPO_STORAGE_DEADLINE_S"


def command_deadline():
    """deadline_at() for one command that only reads or copies stored runs (hpo results ...): all its storage
    calls together end within HPO_STORAGE_DEADLINE_S (default 300 s), however many objects it touches."""
    return deadline_at(time.monotonic() + float(os.environ.get(COMMAND_DEADLINE_ENV, "300")))


def time_left(limit: float) -> float:
    """Seconds one storage request may take now: `limit`, or less when a deadline_at() comes sooner."""
    at = getattr(_deadline, "at", None)
    return limit if at is None else min(limit, at - time.monotonic())


class Store(ABC):
    scheme: ClassVar[str]  # the URI scheme this class serves ("file", "s3")
    remote: ClassVar[bool]  # reached over a network: write behind a local spool, stage Ray's files locally
    uri: str

    @classmethod
    def check_uri(cls, uri: str) -> None:
        """Raise ValueError naming the fix if `uri` (of this scheme) cannot be used. Subclasses add their rules."""
        if "\x00" in uri or "\n" in uri:
            raise ValueError("contains a control character")

    @classmethod
    def open(cls, uri: str, options=None) -> Store:
        """The store rooted at `uri` (already checked); each scheme's class implements it."""
        raise NotImplementedError(f"{cls.__name__} serves no URI scheme")

    @classmethod
    def shared_by_all_nodes(cls, uri: str) -> bool:
        """Whether every node of a cluster reaches the same data at `uri` (a relative path does not)."""
        return cls.remote

    def preflight(self) -> str | None:
        """Before a run writes anything: raise StoreError for what no retry can fix (no such bucket, refused
        credentials); return a warning for what may pass (a server not answering yet); None if all is well."""
        return None

    @abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel` atomically, creating parents."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """Read `rel`; FileNotFoundError if absent."""

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abstractmethod
    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """{relative path: size in bytes} of every object under `prefix`, sorted by path."""

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of every object under `prefix`, sorted."""
        return list(self.list_sizes(prefix))

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Delete `rel` if present."""

    @abstractmethod
    def arrow_filesystem(self):
        """(pyarrow.fs.FileSystem, root path within it) for Parquet readers."""

    def path(self, rel: str = "") -> str:
        """The URI of `rel` (for messages and for the links results keep, e.g. to checkpoints)."""
        return "/".join([self.uri.rstrip("/"), rel.strip("/")]) if rel else self.uri

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")
