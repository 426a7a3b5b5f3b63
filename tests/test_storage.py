"""One contract, every store: local disk and a real S3-compatible server (SeaweedFS), bare and spooled."""

from __future__ import annotations

import secrets

import pytest
import s3server

from orchestrator.storage import LocalStore, S3Options, StoreError, check_storage_uri, open_store
from orchestrator.storage.spool import SpoolingStore, pending_items


@pytest.fixture(
    params=[
        "local",
        "spooled-local",
        pytest.param("s3", marks=pytest.mark.slow),
        pytest.param("write-behind-s3", marks=pytest.mark.slow),
    ]
)
def store(request, tmp_path):
    if request.param.endswith("local"):
        local = LocalStore(tmp_path / "root")
        return local if request.param == "local" else SpoolingStore(local, tmp_path / "spool")
    request.getfixturevalue("s3")
    inner = open_store(f"s3://{s3server.BUCKET}/contract-{secrets.token_hex(4)}")
    if request.param == "s3":
        return inner
    return SpoolingStore(inner, tmp_path / "spool", write_behind=True)


def test_write_read_overwrite(store):
    store.write_bytes("a/b.bin", b"one")
    assert store.read_bytes("a/b.bin") == b"one"
    store.write_bytes("a/b.bin", b"two")
    assert store.read_bytes("a/b.bin") == b"two"
    store.write_text("c.txt", "héllo")
    assert store.read_text("c.txt") == "héllo"


def test_missing_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope/never")
    assert not store.exists("nope/never")


def test_list_exists_delete(store):
    for name in ("x/1", "x/2", "x/deeper/3", "y/4"):
        store.write_bytes(name, name.encode())
    assert store.list("x") == ["x/1", "x/2", "x/deeper/3"]
    assert store.list_sizes("y") == {"y/4": 3}
    assert store.exists("x/2")
    store.delete("x/2")
    store.delete("x/2")  # idempotent
    assert not store.exists("x/2") and store.list("x") == ["x/1", "x/deeper/3"]
    assert set(store.list()) == {"x/1", "x/deeper/3", "y/4"}


def test_path_and_arrow_filesystem(store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.results.writer import parquet_bytes

    store.write_bytes("t/table.parquet", parquet_bytes(pa.table({"a": [1, 2, 3]})))
    if isinstance(store, SpoolingStore):
        assert store.drain(timeout_s=30)  # pyarrow sees the inner store: wait for write-behind uploads
    fs, root = store.arrow_filesystem()
    assert pq.read_table(f"{root}/t/table.parquet", filesystem=fs)["a"].to_pylist() == [1, 2, 3]
    assert store.path("t/table.parquet").endswith("/t/table.parquet")


def test_local_store_refuses_paths_outside_its_root(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        LocalStore(tmp_path).write_bytes("../escape", b"x")


def test_storage_uri_checks():
    assert check_storage_uri("s3://bucket/prefix") == "s3://bucket/prefix"
    for bad, words in [
        ("gs://b/p", "not supported"),
        ("s3://key:secret@bucket/p", "must not carry credentials"),
        ("s3:///p", "names no bucket"),
        ("", "is empty"),
    ]:
        with pytest.raises(ValueError, match=words):
            check_storage_uri(bad)


@pytest.mark.slow
def test_wrong_credentials_are_refused(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(f"s3://{s3server.BUCKET}/wrong-keys")
    with pytest.raises(StoreError) as info:
        store.write_bytes("x", b"y")
    assert "SignatureDoesNotMatch" in str(info.value) or "AccessDenied" in str(info.value)
    assert s3server.SECRET_KEY not in str(info.value) and "not-the-secret" not in str(info.value)


@pytest.mark.slow
def test_spool_keeps_order_through_an_outage_and_uploads_on_return(s3, tmp_path):
    prefix = f"outage-{secrets.token_hex(4)}"
    store = SpoolingStore(
        open_store(f"s3://{s3server.BUCKET}/{prefix}", S3Options(endpoint_url=s3server.ENDPOINT)),
        tmp_path / "spool",
        backoff_s=0.2,
        max_backoff_s=1.0,
    )
    store.write_bytes("before", b"0")
    s3.stop()
    try:
        store.write_bytes("manifest", b"v1")
        store.write_bytes("part-1", b"rows-1")
        store.write_bytes("manifest", b"v2")
        store.delete("before")
        assert store.outage_seen and store.pending() == 4
        assert store.read_bytes("manifest") == b"v2"  # reads see what the store will hold
        assert not store.exists("before") and store.exists("part-1")
        assert pending_items(tmp_path) == 4
    finally:
        s3.start()
    assert store.drain(timeout_s=60)
    objects = {k.split("/", 1)[1]: v for k, v in s3.all_objects().items() if k.startswith(prefix + "/")}
    assert objects == {"manifest": b"v2", "part-1": b"rows-1"}
    assert store.pending() == 0


@pytest.mark.slow
def test_write_behind_never_blocks_on_a_dead_store(s3, tmp_path):
    """A write-behind store accepts writes at local-disk speed while the server is down."""
    import time

    prefix = f"behind-{secrets.token_hex(4)}"
    store = SpoolingStore(
        open_store(f"s3://{s3server.BUCKET}/{prefix}"),
        tmp_path / "spool",
        write_behind=True,
        backoff_s=0.2,
        max_backoff_s=1.0,
    )
    s3.stop()
    try:
        began = time.monotonic()
        for i in range(50):
            store.write_bytes(f"rows/part-{i:03d}", b"x" * 1000)
        assert time.monotonic() - began < 2.0
        with pytest.raises(StoreError):
            store.list_sizes("rows")  # listing needs the server; reads of spooled objects do not
        assert store.read_bytes("rows/part-049") == b"x" * 1000 and store.exists("rows/part-000")
    finally:
        s3.start()
    assert store.drain(timeout_s=60)
    keys = [k for k in s3.all_objects() if k.startswith(prefix + "/")]
    assert len(keys) == 50
