"""A Store on the local filesystem (or any mounted shared filesystem)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator.storage.base import Store, StoreError, disk_full


class LocalStore(Store):
    """A local folder, or one on a filesystem every node mounts; a path without a scheme is one."""

    scheme = "file"
    remote = False

    @classmethod
    def open(cls, uri: str, options=None) -> LocalStore:
        return cls(uri.removeprefix("file://"))

    @classmethod
    def shared_by_all_nodes(cls, uri: str) -> bool:
        return os.path.isabs(uri.removeprefix("file://"))  # a relative path is relative to each node's cwd

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _full(self, rel: str) -> Path:
        full = (self.root / rel).resolve()
        if full != self.root and self.root not in full.parents:
            raise ValueError(f"{rel!r} points outside {self.root}")
        return full

    def write_bytes(self, rel: str, data: bytes) -> None:
        full = self._full(rel)
        try:
            full.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target under a hidden name (Parquet readers skip dot-files), then rename: atomic.
            fd, tmp = tempfile.mkstemp(dir=full.parent, prefix=f".{full.name}.", suffix=".tmp")
        except OSError as exc:
            raise disk_full(full, exc) or StoreError(f"cannot write {full} ({exc.strerror})") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, full)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)  # no partial file is left, however the write ended
            if isinstance(exc, OSError) and (full_disk := disk_full(full, exc)):
                raise full_disk from None
            raise

    def read_bytes(self, rel: str) -> bytes:
        return self._full(rel).read_bytes()

    def exists(self, rel: str) -> bool:
        return self._full(rel).exists()

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        base = self._full(prefix) if prefix else self.root
        if base.is_file():
            return {prefix: base.stat().st_size}
        if not base.is_dir():
            return {}
        # Hidden names are writes in progress (see write_bytes), not objects yet.
        files = (p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        return dict(sorted((str(p.relative_to(self.root)), p.stat().st_size) for p in files))

    def delete(self, rel: str) -> None:
        self._full(rel).unlink(missing_ok=True)

    def arrow_filesystem(self):
        import pyarrow.fs as pafs  # heavy: pyarrow, which validating a spec does not need

        return pafs.LocalFileSystem(), str(self.root)
