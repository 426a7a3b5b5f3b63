"""An S3 endpoint that stops answering or trickles: every storage call ends in bounded time with one line, the
spool's uploader survives, and a run through such an endpoint ends with exit 3 and its rows safe in the spool.

The hostile endpoint is a TCP proxy on loopback (tests/tcp_proxy.py) in front of the session's real SeaweedFS:
silent (connections accepted, never answered) or trickling (headers, then a byte every 2 s)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import s3server
from conftest import spec_dict, spec_file, wait_for
from tcp_proxy import TcpProxy

from orchestrator.results import load_results, load_trials
from orchestrator.storage import S3Options, StoreError, open_store
from orchestrator.storage.base import deadline_at
from orchestrator.storage.spool import SpoolingStore, run_spool_dir

pytestmark = pytest.mark.slow
LIMIT_S = 2  # HPO_S3_TIMEOUT_S in these tests (each silent call waits it out)


@pytest.fixture
def proxy(s3, monkeypatch):
    monkeypatch.setenv("HPO_S3_TIMEOUT_S", str(LIMIT_S))
    p = TcpProxy(int(s3server.ENDPOINT.rsplit(":", 1)[1]))
    yield p
    p.close()


def _store(proxy, prefix="hostile"):
    return open_store(f"s3://{s3server.BUCKET}/{prefix}-{secrets.token_hex(3)}", S3Options(proxy.endpoint))


@pytest.mark.parametrize("mode", ["silent", "trickle"])
def test_every_store_call_ends_in_bounded_time_with_one_line(proxy, mode):
    store = _store(proxy)
    store.write_bytes("a.bin", b"x" * 1000)
    assert store.read_bytes("a.bin") == b"x" * 1000  # forwarding works
    proxy.mode = mode
    store = open_store(store.uri, S3Options(proxy.endpoint))  # new connections: a pooled one would forward
    calls = {
        "read": lambda: store.read_bytes("a.bin"),
        "write": lambda: store.write_bytes("b.bin", b"y"),
        "list": lambda: store.list_sizes(),
        "delete": lambda: store.delete("a.bin"),
    }
    if mode == "silent":  # a trickle's headers alone answer a HEAD
        calls["stat"] = lambda: store.exists("a.bin")

    def timed(call) -> tuple[float, BaseException | None]:
        start = time.monotonic()
        try:
            call()
        except BaseException as error:  # noqa: BLE001 (judged below, in the test's thread)
            return time.monotonic() - start, error
        return time.monotonic() - start, None

    # all at once, each timed on its own (one after another they took 5 x LIMIT_S): a call that waited on another
    # (a lock, a shared connection) would take longer than its own limit
    with ThreadPoolExecutor(len(calls)) as pool:
        outcomes = dict(zip(calls, pool.map(timed, calls.values()), strict=True))
    for name, (took, error) in outcomes.items():
        assert isinstance(error, StoreError), f"{mode}: {name} did not fail with a StoreError: {error!r}"
        assert took < LIMIT_S + 2, f"{mode}: {name} took {took:.1f}s"
        assert store.uri in str(error) and "\n" not in str(error)
    if mode == "silent":
        assert "not answering" in store.preflight()  # only a warning: a run spools through it
    proxy.mode = "forward"
    assert store.read_bytes("a.bin") == b"x" * 1000  # a fresh client after the stuck ones


def test_a_request_given_up_on_is_never_sent_again_once_the_endpoint_answers(proxy):
    """A write given up on while the endpoint is silent must not land later: botocore retries a request whose
    socket timed out (after HPO_S3_TIMEOUT_S here), on a new connection, and by then the endpoint may answer; that
    late write would put an old object over a newer one (an old manifest over the new). The given-up client
    refuses it."""
    store = _store(proxy)
    proxy.mode = "silent"
    with pytest.raises(StoreError, match="did not answer"):
        store.write_bytes("late.bin", b"old")
    proxy.mode = "forward"  # from here botocore's retry would reach the server

    def requests_left() -> list:
        return [t for t in threading.enumerate() if t.name == "hpo-s3-request" and t.is_alive()]

    wait_for(lambda: not requests_left(), "the given-up request's thread to end (its retry refused)", 60)
    assert not open_store(store.uri, S3Options(proxy.endpoint)).exists("late.bin")
    store.write_bytes("late.bin", b"new")  # the store itself goes on, with a fresh client
    assert store.read_bytes("late.bin") == b"new"


def test_a_deadline_cuts_a_trickling_upload_short(proxy):
    store = _store(proxy)
    proxy.mode = "trickle"
    start = time.monotonic()
    with deadline_at(time.monotonic() + 1), pytest.raises(StoreError, match="did not answer within 1s"):
        store.read_bytes("x")
    assert time.monotonic() - start < 2


def test_the_uploader_survives_a_silent_endpoint_and_finishes_after_it(proxy, tmp_path):
    inner = _store(proxy)
    proxy.mode = "silent"
    spool = SpoolingStore(inner, tmp_path / "spool", write_behind=True, backoff_s=0.2, max_backoff_s=0.5)
    for i in range(3):
        spool.write_bytes(f"f{i}", b"%d" % i)
    wait_for(lambda: spool.outage_seen, "the uploader met the outage", 20)
    assert spool._thread is not None and spool._thread.is_alive()  # still retrying
    proxy.mode = "forward"
    wait_for(lambda: spool.pending() == 0, "the spool drained once the endpoint answered", 30)
    assert [inner.read_bytes(f"f{i}") for i in range(3)] == [b"0", b"1", b"2"]
    spool.close()


@pytest.mark.parametrize("mode", ["silent", "trickle"])
def test_results_commands_give_up_in_bounded_time_with_exit_2(proxy, cli, mode):
    uri = f"s3://{s3server.BUCKET}/nothing-{secrets.token_hex(3)}"
    proxy.mode = mode
    for args in (
        ("results", "show", uri),
        ("results", "ls", f"s3://{s3server.BUCKET}"),
        ("results", "pull", uri, "--to", "pulled"),
    ):
        start = time.monotonic()
        done = cli(*args, env={"AWS_ENDPOINT_URL_S3": proxy.endpoint})
        code, out, err = done.returncode, done.stdout, done.stderr
        took = time.monotonic() - start
        assert code == 2, (args, out, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "did not answer" in err, err
        assert took < 4 * LIMIT_S, f"{args}: {took:.1f}s"


@pytest.mark.parametrize("mode", ["silent", "trickle"])
def test_a_run_whose_endpoint_goes_silent_ends_with_exit_3_and_syncs_every_row_later(
    ray_cluster, proxy, cli, tmp_path, mode
):
    """The endpoint answers at the start, then goes silent mid-run: training goes on into the spool, the end of
    the run waits HPO_DRAIN_TIMEOUT_S and no longer, exits 3 with the sync hint; once the endpoint answers again,
    `hpo results sync` lands every row and run.json says the run finished."""
    storage = f"s3://{s3server.BUCKET}/silent-{secrets.token_hex(3)}"
    spec = spec_dict(
        name="silent",
        storage=storage,
        storage_options={"endpoint_url": proxy.endpoint},
        search={"num_samples": 2, "max_concurrent": 1},
        train={"max_epochs": 3},
    )
    path = spec_file(tmp_path / "job.yaml", spec)
    seen = []

    def go_silent_after_first_trial():
        store = open_store(storage, S3Options(s3server.ENDPOINT))  # behind the proxy's back
        runs = store.list("silent")
        if runs:
            seen.append(runs)
            proxy.mode = mode
            return True
        return False

    import threading

    watcher = threading.Thread(
        target=lambda: wait_for(go_silent_after_first_trial, "the run's first objects", 120, every_s=0.2),
        daemon=True,
    )
    watcher.start()
    start = time.monotonic()
    done = cli("run", str(path), "--output", "json", env={"HPO_DRAIN_TIMEOUT_S": "4"})
    code, out, err = done.returncode, done.stdout, done.stderr
    took = time.monotonic() - start
    watcher.join(1)
    assert seen, "the endpoint never went silent during the run"
    assert code == 3, err[-3000:]
    assert "hpo results sync" in err and "Traceback" not in err, err[-3000:]
    uri = out.splitlines()[0].removeprefix("results_uri: ")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["upload_pending"] > 0
    assert took < 240, took
    proxy.mode = "forward"
    done = cli("results", "sync", uri)
    assert done.returncode == 0, done.stderr
    assert load_results(uri).num_rows == 6 and load_trials(uri).num_rows == 2
    info = json.loads(open_store(uri).read_bytes("run.json"))
    assert info["status"] == "finished"
    assert not run_spool_dir(uri).exists()


def test_one_deadline_bounds_a_whole_results_command(proxy, cli, monkeypatch):
    """Many slow requests, each inside the per-request limit: HPO_STORAGE_DEADLINE_S still ends the command."""
    monkeypatch.setenv("HPO_S3_TIMEOUT_S", "60")
    proxy.mode = "trickle"
    start = time.monotonic()
    done = cli(
        "results",
        "show",
        f"s3://{s3server.BUCKET}/x",
        env={"AWS_ENDPOINT_URL_S3": proxy.endpoint, "HPO_STORAGE_DEADLINE_S": "2"},
    )
    assert done.returncode == 2 and "did not answer within 2s" in done.stderr, done.stderr
    assert time.monotonic() - start < 5
