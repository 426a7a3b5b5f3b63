"""Where results live: a small `Store` interface (base.py) with local (local.py) and S3 (s3.py)
implementations, and a spool (spool.py) that keeps writes safe through storage outages."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from orchestrator.storage.base import Store, StoreError
from orchestrator.storage.local import LocalStore
from orchestrator.storage.s3 import S3Options, S3Store

__all__ = [
    "Store",
    "StoreError",
    "LocalStore",
    "S3Store",
    "S3Options",
    "open_store",
    "check_storage_uri",
    "join_uri",
    "is_remote",
]


def check_storage_uri(uri: str) -> str:
    """Return `uri` if it names storage we can write to, else raise ValueError naming the fix."""
    if not uri.strip():
        raise ValueError("is empty; give a local folder such as ./results or s3://bucket/prefix")
    if "\x00" in uri or "\n" in uri:
        raise ValueError("contains a control character")
    if "://" not in uri or uri.startswith("file://"):
        return uri
    scheme = uri.split("://", 1)[0]
    if scheme != "s3":
        raise ValueError(
            f"scheme {scheme + '://'!r} is not supported (use a local path, file:// or s3://; for "
            "GCS, R2 or MinIO use s3:// with storage_options.endpoint_url)"
        )
    parsed = urlparse(uri)
    if "@" in parsed.netloc:
        raise ValueError(
            "s3:// URIs must not carry credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the "
            "environment, ~/.aws/credentials, or use an instance role"
        )
    if not parsed.netloc:
        raise ValueError(f"{uri!r} names no bucket; write s3://bucket/prefix")
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{0,62}(/[A-Za-z0-9!_.*'()\-/=]*)?", uri):
        raise ValueError(
            f"{uri!r}: use a bucket name (lowercase letters, digits, dots, dashes) and a prefix of "
            "letters, digits and !_.*'()-=/ (S3's safe characters)"
        )
    if any(part in (".", "..") for part in parsed.path.split("/")) or "//" in parsed.path:
        raise ValueError(
            f"{uri!r}: S3 keys take no '.', '..' or empty path segments; write s3://bucket/prefix"
        )
    return uri


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


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
    if is_remote(uri):
        return S3Store(uri, options)
    return LocalStore(uri.removeprefix("file://"))
