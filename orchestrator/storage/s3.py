"""A Store on S3-compatible object storage (AWS S3, MinIO, SeaweedFS, R2, GCS's S3 API).

Credentials come only from the standard AWS chain (environment, ~/.aws, instance roles): this module never
takes, holds in its pickled state, or prints a secret. The endpoint comes from `storage_options.endpoint_url`,
else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (boto3's own variables; pyarrow ignores them, so we pass
the endpoint on to its S3FileSystem ourselves).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

from orchestrator.storage.base import Store, StoreError, time_left

TIMEOUT_ENV = "HPO_S3_TIMEOUT_S"  # the longest one request may take, its whole body included


def request_timeout_s() -> float:
    """How long one S3 request may take in all (HPO_S3_TIMEOUT_S, default 30 s). botocore's own timeouts bound
    each socket read, so an endpoint that trickles a byte every few seconds would never trip them."""
    return float(os.environ.get(TIMEOUT_ENV, "30"))


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore error ("NoSuchKey", "403", ...), else "". botocore's connection and
    timeout errors have no response (`response` is absent or None)."""
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


_NOT_FOUND = ("NoSuchKey", "404", "NotFound")


class GivenUp(Exception):
    """A request of an S3 client that hpo gave up on (see S3Store.client): refused before botocore sends it."""


def _refuse_when(given_up: threading.Event):
    def before_send(**_):
        if given_up.is_set():
            raise GivenUp("hpo gave up on this request; not sent again")
        return None

    return before_send


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
        self._given_up: threading.Event | None = None  # set once _call gives up on a request of _client

    def __getstate__(self):  # a boto3 client neither pickles nor should travel with its credentials
        state = dict(self.__dict__)
        state["_client"] = state["_given_up"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            import boto3  # heavy: boto3, which validating a spec does not need
            from botocore.config import Config  # heavy: boto3's botocore

            # botocore's socket timeouts no longer than the request's own limit: a request given up on at the
            # limit is left to end on its own (see _call), and these end it, with its thread, that much sooner
            limit = request_timeout_s()
            config = Config(
                s3={"addressing_style": self.options.resolved_addressing()},
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=min(3, limit),
                read_timeout=min(10, limit),
            )
            # A session per store: boto3's default session caches the credentials it resolved first.
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.options.resolved_endpoint(),
                region_name=self.options.resolved_region(),
                config=config,
            )
            # Once _call gives up on a request of this client, botocore must not send it again: its retry,
            # once the endpoint answers, would land a write or delete after newer ones (an old manifest over
            # the new). Every attempt of a given-up client is refused before it is sent.
            given_up = threading.Event()
            client.meta.events.register("before-send.s3", _refuse_when(given_up))
            self._client, self._given_up = client, given_up
        return self._client

    def _key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _fail(self, action: str, rel: str, exc: BaseException) -> StoreError:
        code = error_code(exc)
        reason = f"{code}: " if code else ""
        error = StoreError(f"cannot {action} {self.path(rel)} ({reason}{type(exc).__name__})")
        error.code = code or type(exc).__name__  # what preflight tells apart: a definite refusal or not
        return error

    def _endpoint(self) -> str:
        return self.options.resolved_endpoint() or "S3"

    def _call(self, action: str, rel: str, request):
        """`request(client)`, bounded in all by request_timeout_s() (or the thread's storage deadline, if
        sooner). It runs on a daemon thread: a request still stuck at the limit is left to end on its own
        (botocore's socket timeouts end it once the endpoint goes quiet) and this store takes a fresh client,
        so later requests do not queue behind it. Every error becomes a StoreError naming the object (or
        FileNotFoundError for a missing one)."""
        limit = time_left(request_timeout_s())
        if limit <= 0:
            raise StoreError(f"cannot {action} {self.path(rel)}: the time allowed for storage ran out")
        client, given_up = self.client, self._given_up
        box: dict = {}

        def run() -> None:
            try:
                box["value"] = request(client)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="hpo-s3-request", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            given_up.set()  # its retries, and any other request still on this client, are never sent
            if self._client is client:
                self._client = None
            raise StoreError(
                f"cannot {action} {self.path(rel)}: {self._endpoint()} did not answer within {limit:.0f}s"
            )
        if "error" in box:
            exc = box["error"]
            if not isinstance(exc, Exception):
                raise exc
            if error_code(exc) in _NOT_FOUND:
                raise FileNotFoundError(self.path(rel)) from None
            raise self._fail(action, rel, exc) from None
        return box.get("value")

    def write_bytes(self, rel: str, data: bytes) -> None:
        key = self._key(rel)  # PUT is atomic
        self._call("write", rel, lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=data))

    def read_bytes(self, rel: str) -> bytes:
        key = self._key(rel)  # the body is read inside the bounded request: a trickle cannot outlast it
        return self._call("read", rel, lambda c: c.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def exists(self, rel: str) -> bool:
        key = self._key(rel)
        try:
            self._call("stat", rel, lambda c: c.head_object(Bucket=self.bucket, Key=key))
            return True
        except FileNotFoundError:
            return False

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        base = self._key(prefix) if prefix else self.prefix
        base = f"{base}/" if base else ""

        def listing(client) -> dict[str, int]:
            found: dict[str, int] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"]
                    found[rel] = obj["Size"]
            return found

        try:
            found = self._call("list", prefix, listing)
        except FileNotFoundError as exc:  # the bucket itself
            raise StoreError(f"cannot list {self.path(prefix)} (NoSuchBucket)") from exc
        return dict(sorted(found.items()))

    def delete(self, rel: str) -> None:
        key = self._key(rel)
        try:
            self._call("delete", rel, lambda c: c.delete_object(Bucket=self.bucket, Key=key))
        except FileNotFoundError:
            pass  # deletes are idempotent

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
            self._call("reach", "", lambda c: c.head_bucket(Bucket=self.bucket))
            return None
        except FileNotFoundError:
            code = "404"
        except StoreError as exc:
            code = getattr(exc, "code", "") or "no answer"
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
