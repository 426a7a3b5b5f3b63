"""Where results live: a small `Store` interface (base.py), one implementation per URI scheme (local.py,
s3.py), and a spool (spool.py) that keeps writes safe through storage outages.

SCHEMES is the one list of schemes: a URI is checked, opened and described through it, and nothing outside
this package looks at a URI's scheme. A path without a scheme is a local folder.
"""

from __future__ import annotations

from orchestrator.errors import did_you_mean
from orchestrator.storage.base import Store, StoreError
from orchestrator.storage.local import LocalStore
from orchestrator.storage.s3 import S3Options, S3Store

__all__ = [
    "Store",
    "StoreError",
    "LocalStore",
    "S3Store",
    "S3Options",
    "SCHEMES",
    "open_store",
    "check_storage_uri",
    "join_uri",
    "shared_by_all_nodes",
]

SCHEMES: dict[str, type[Store]] = {cls.scheme: cls for cls in (LocalStore, S3Store)}


def _store_class(uri: str) -> type[Store]:
    scheme = uri.split("://", 1)[0] if "://" in uri else LocalStore.scheme
    if scheme not in SCHEMES:
        known = [s + "://" for s in SCHEMES]
        raise ValueError(
            f"scheme {scheme + '://'!r} is not supported ({did_you_mean(scheme + '://', known)}use a local path, "
            f"{' or '.join(known)}; for GCS, R2 or MinIO use s3:// with storage_options.endpoint_url)"
        )
    return SCHEMES[scheme]


def check_storage_uri(uri: str) -> str:
    """Return `uri` if it names storage we can write to, else raise ValueError naming the fix."""
    if not uri.strip():
        raise ValueError("is empty; give a local folder such as ./results or s3://bucket/prefix")
    _store_class(uri).check_uri(uri)
    return uri


def shared_by_all_nodes(uri: str) -> bool:
    """Whether every node of a cluster reaches the same data at `uri` (s3://, an absolute path)."""
    return _store_class(check_storage_uri(uri)).shared_by_all_nodes(uri)


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def open_store(uri: str, options: S3Options | None = None) -> Store:
    """The store rooted at `uri` (a local path, file://, or s3://bucket/prefix). A URI we cannot use is a
    StoreError naming it and the fix (the CLI prints it as one line, exit 2)."""
    try:
        check_storage_uri(uri)
    except ValueError as exc:
        reason = str(exc)
        raise StoreError(
            f"storage URI {reason}" if reason.startswith(repr(uri)) else f"storage URI {uri!r} {reason}"
        ) from None
    return _store_class(uri).open(uri, options)
