"""The storage interface: a handful of operations on paths relative to a root URI.

Everything a run writes goes through a Store, so a second implementation (S3) only has to pass the same
contract tests. Writes are atomic: a reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class StoreError(OSError):
    """A storage operation failed; the message names the URI."""


class Store(ABC):
    uri: str

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
        """(pyarrow.fs.FileSystem, root path within it) for Parquet readers and Ray's storage_path."""

    def path(self, rel: str = "") -> str:
        """The URI of `rel` (for messages and for Ray's storage_path)."""
        return "/".join([self.uri.rstrip("/"), rel.strip("/")]) if rel else self.uri

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")
