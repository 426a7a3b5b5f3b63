"""One driver per run (execution/lease.py): the lease a run's driver holds in its storage, against real files."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from orchestrator.errors import RunError
from orchestrator.execution.lease import STALE_BEATS, RunLease
from orchestrator.ray_support.processes import process_alive
from orchestrator.results.layout import LEASE_FILE
from orchestrator.storage import LocalStore


def _plant(store, *, host, pid, age_s, beat_s=10.0):
    info = {"host": host, "pid": pid, "token": "theirs", "heartbeat": time.time() - age_s, "beat_s": beat_s}
    store.write_bytes(LEASE_FILE, json.dumps(info).encode())


def _dead_pid() -> int:
    pid = 2**22 - 7  # above the default pid_max of most systems; checked below
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_live_driver_on_another_host_is_named_and_its_run_refused(tmp_path):
    store = LocalStore(tmp_path)
    _plant(store, host="node-7", pid=4242, age_s=3)
    with pytest.raises(RunError) as refused:
        RunLease(store, progress=lambda line: None).acquire()
    message = str(refused.value)
    assert "is being run by driver pid 4242 on node-7 (heartbeat 3s ago)" in message
    assert f"hpo resume {store.uri}" in message and "\n" not in message
    assert json.loads(store.read_bytes(LEASE_FILE))["token"] == "theirs"  # untouched
    with pytest.raises(RunError):
        RunLease(store).check_free()


def test_a_live_driver_on_this_host_is_refused_and_a_dead_one_taken_over_at_once(tmp_path):
    store = LocalStore(tmp_path)
    _plant(store, host=socket.gethostname(), pid=os.getpid(), age_s=1)  # this very process: alive
    with pytest.raises(RunError, match=f"driver pid {os.getpid()}"):
        RunLease(store).check_free()
    _plant(store, host=socket.gethostname(), pid=_dead_pid(), age_s=1)  # gone: no need to wait for staleness
    lease = RunLease(store, progress=lambda line: None)
    with lease:
        assert json.loads(store.read_bytes(LEASE_FILE))["token"] == lease.token
    assert not store.exists(LEASE_FILE)  # given back when the run ends


def test_a_zombie_driver_on_this_host_counts_as_gone_and_its_run_is_taken_over_at_once(tmp_path):
    """A driver killed while its parent never reaped it (a zombie) will never beat again: its lease does not
    hold the run (ray_support/processes.py, which `hpo up`'s daemon check shares)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert process_alive(os.getpid()) and not process_alive(pid) and not process_alive(_dead_pid())
        store = LocalStore(tmp_path)
        _plant(store, host=socket.gethostname(), pid=pid, age_s=1)
        with RunLease(store, progress=lambda line: None) as lease:
            assert json.loads(store.read_bytes(LEASE_FILE))["token"] == lease.token
    finally:
        os.waitpid(pid, 0)


def test_a_stale_lease_is_taken_over_and_said(tmp_path):
    store = LocalStore(tmp_path)
    _plant(store, host="node-7", pid=4242, age_s=STALE_BEATS * 10 + 5)
    said = []
    lease = RunLease(store, progress=said.append)
    lease.acquire()
    try:
        assert said and "taking over the run from driver pid 4242 on node-7" in said[0]
        assert json.loads(store.read_bytes(LEASE_FILE))["pid"] == os.getpid()
    finally:
        lease.release()


def test_a_damaged_lease_does_not_block_a_run(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes(LEASE_FILE, b'{"host": "no')
    with RunLease(store, progress=lambda line: None):
        pass


def test_a_driver_whose_lease_was_taken_over_learns_it_at_its_next_beat(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_LEASE_HEARTBEAT_S", "0.05")
    store = LocalStore(tmp_path)
    lost = threading.Event()
    why = []
    lease = RunLease(
        store, on_lost=lambda reason: (why.append(reason), lost.set()), progress=lambda line: None
    )
    lease.acquire()
    _plant(store, host="node-9", pid=77, age_s=0)  # another driver took the run while this one was cut off
    assert lost.wait(10), "the heartbeat never noticed"
    assert "another driver took over this run (node-9, pid 77)" in why[0]
    lease.release()
    assert json.loads(store.read_bytes(LEASE_FILE))["host"] == "node-9"  # not deleted: it is not ours


def test_the_heartbeat_keeps_the_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_LEASE_HEARTBEAT_S", "0.05")
    store = LocalStore(tmp_path)
    with RunLease(store, progress=lambda line: None):
        first = json.loads(store.read_bytes(LEASE_FILE))["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads(store.read_bytes(LEASE_FILE))["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            threading.Event().wait(0.02)
