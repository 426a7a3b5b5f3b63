"""A Store on S3-compatible object storage (AWS S3, MinIO, SeaweedFS, R2, GCS's S3 API).

Credentials come only from the standard AWS chain (environment, ~/.aws, instance roles): this module never
takes, holds in its pickled state, or prints a secret. The endpoint comes from `storage_options.endpoint_url`,
else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (boto3's own variables; pyarrow ignores them, so we pass
the endpoint on to its S3FileSystem ourselves).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from orchestrator.storage.base import Store, StoreError


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None  # "path" | "virtual" | "auto"

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )

    def resolved_region(self) -> str:
        return (
            self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )

    def resolved_addressing(self) -> str:
        # S3-compatible servers on an endpoint almost always want path-style; AWS itself wants virtual hosts.
        return self.addressing_style or ("path" if self.resolved_endpoint() else "auto")


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.strip("/")


_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.\-]{0,62}(/[A-Za-z0-9!_.*'()\-/=]*)?")


class S3Store(Store):
    """S3-compatible object storage (AWS S3, MinIO, SeaweedFS, R2, GCS's S3 API), written behind a local spool."""

    scheme = "s3"
    remote = True

    @classmethod
    def check_uri(cls, uri: str) -> None:
        super().check_uri(uri)
        parsed = urlparse(uri)
        if "@" in parsed.netloc:
            raise ValueError(
                "s3:// URIs must not carry credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the "
                "environment, ~/.aws/credentials, or use an instance role"
            )
        if not parsed.netloc:
            raise ValueError(f"{uri!r} names no bucket; write s3://bucket/prefix")
        if not _S3_URI.fullmatch(uri):
            raise ValueError(
                f"{uri!r}: use a bucket name (lowercase letters, digits, dots, dashes) and a prefix of "
                "letters, digits and !_.*'()-=/ (S3's safe characters)"
            )
        if any(part in (".", "..") for part in parsed.path.split("/")) or "//" in parsed.path:
            raise ValueError(
                f"{uri!r}: S3 keys take no '.', '..' or empty path segments; write s3://bucket/prefix"
            )

    @classmethod
    def open(cls, uri: str, options: S3Options | None = None) -> S3Store:
        return cls(uri, options)

    def __init__(self, uri: str, options: S3Options | None = None):
        self.bucket, self.prefix = split_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.options = options or S3Options()
        self._client = None

    def __getstate__(self):  # a boto3 client neither pickles nor should travel with its credentials
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            import boto3  # heavy: boto3, which validating a spec does not need
            from botocore.config import Config  # heavy: boto3's botocore

            config = Config(
                s3={"addressing_style": self.options.resolved_addressing()},
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=3,
                read_timeout=10,
            )
            # A session per store: boto3's default session caches the credentials it resolved first.
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.options.resolved_endpoint(),
                region_name=self.options.resolved_region(),
                config=config,
            )
        return self._client

    def _key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _fail(self, action: str, rel: str, exc: Exception) -> StoreError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        reason = f"{code}: " if code else ""
        return StoreError(f"cannot {action} {self.path(rel)} ({reason}{type(exc).__name__})")

    def write_bytes(self, rel: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)  # PUT is atomic
        except Exception as exc:
            raise self._fail("write", rel, exc) from None

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.path(rel)) from None
            raise self._fail("read", rel, exc) from None

    def exists(self, rel: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(rel))
            return True
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("stat", rel, exc) from None

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        base = self._key(prefix) if prefix else self.prefix
        base = f"{base}/" if base else ""
        found: dict[str, int] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"]
                    found[rel] = obj["Size"]
        except Exception as exc:
            raise self._fail("list", prefix, exc) from None
        return dict(sorted(found.items()))

    def delete(self, rel: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(rel))
        except Exception as exc:
            raise self._fail("delete", rel, exc) from None

    DEFINITE = (
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "403",
        "404",
        "NoCredentialsError",
        "PartialCredentialsError",
    )

    def preflight(self) -> str | None:
        """None if the bucket answers; else a reason. Raises StoreError for errors no retry can fix (no such
        bucket, refused or missing credentials); an unreachable server is only reported (we spool through it)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return None
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") or type(exc).__name__
            if code in self.DEFINITE:
                what = {"404": "NoSuchBucket", "403": "AccessDenied"}.get(code, code)
                raise StoreError(
                    f"cannot use {self.uri}: {what} (check the bucket name, AWS credentials and endpoint)"
                ) from None
            return f"{self.uri} is not answering ({code}); results will wait in the local spool"

    def arrow_filesystem(self):
        import pyarrow.fs as pafs  # heavy: pyarrow, which validating a spec does not need

        endpoint = self.options.resolved_endpoint()
        kwargs = {
            "region": self.options.resolved_region(),
            "force_virtual_addressing": self.options.resolved_addressing() == "virtual",
        }
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
        return pafs.S3FileSystem(**kwargs), f"{self.bucket}/{self.prefix}".rstrip("/")
