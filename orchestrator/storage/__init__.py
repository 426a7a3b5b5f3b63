"""Where results live: a small `Store` interface (base.py) with a local implementation (local.py)."""

from __future__ import annotations

from orchestrator.storage.base import Store, StoreError
from orchestrator.storage.local import LocalStore

__all__ = ["Store", "StoreError", "LocalStore", "open_store", "check_storage_uri", "join_uri"]

SUPPORTED = ("a local path", "file://")


def check_storage_uri(uri: str) -> str:
    """Return `uri` if it names storage we can write to, else raise ValueError naming the fix."""
    if not uri.strip():
        raise ValueError("is empty; give a local folder such as ./results")
    if "\x00" in uri:
        raise ValueError("contains a NUL byte")
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise ValueError(f"scheme {scheme + '://'!r} is not supported (use a local path or file://; "
                         "s3:// support is planned)")
    return uri


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def open_store(uri: str) -> Store:
    """The store rooted at `uri`."""
    check_storage_uri(uri)
    return LocalStore(uri.removeprefix("file://"))
