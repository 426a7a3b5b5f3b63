"""One driver per run: a lease object in the run's storage (`lease.json`) names the driver that holds the run
(host, pid, a random token) and a heartbeat it rewrites every HPO_LEASE_HEARTBEAT_S (10 s).

Why: two drivers on one run (`hpo resume` of a run whose driver still runs) both train the remaining trials and
each rewrites the manifest the other depends on. A store has no lock we can rely on everywhere (S3's
conditional writes are not in every S3-compatible server), so the lease is a heartbeat that a second driver
must see go stale before it takes over:

- no lease, or the holder's token is ours: take it;
- the holder is on this host and its process is gone (a SIGKILLed driver, a closed terminal): take it now;
- the holder's heartbeat is older than STALE_BEATS heartbeats (a driver on another host, dead or cut off): take
  it over, and say so;
- otherwise the run is live: refuse, in one line naming the driver.

Taking a lease is write-then-read-back after a short settle: of two drivers that both saw the run free, the one
whose write was overwritten sees the other's token and refuses. The heartbeat thread reads before it writes: a
driver whose lease was taken over (it was cut off longer than the stale age) learns it at its next beat and
stops its run (`on_lost`). The lease is deleted when the run ends; a SIGKILLed driver's stays, stale.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from orchestrator.errors import RunError
from orchestrator.ray_support.processes import process_alive
from orchestrator.results.layout import LEASE_FILE
from orchestrator.storage import Store, StoreError

HEARTBEAT_ENV = "HPO_LEASE_HEARTBEAT_S"
STALE_BEATS = 6  # a heartbeat this many beats old is a driver that is gone (or cut off from the store)
SETTLE_S = 0.5  # between writing the lease and reading it back: a racing driver's write lands in between


def heartbeat_s() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, "10"))


class RunLease:
    """The lease on the run at `store`; a context manager that takes it, beats, and gives it back."""

    def __init__(
        self,
        store: Store,
        *,
        on_lost: Callable[[str], None] = lambda why: None,
        progress=print,
        reachable: bool = True,
        settle: bool = True,
    ):
        self.store, self.on_lost, self.progress, self.reachable = store, on_lost, progress, reachable
        self.settle = settle
        self.token = secrets.token_hex(8)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.beat_s = heartbeat_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # -- reading -----------------------------------------------------------------------------------------------
    def _read(self) -> dict | None:
        try:
            info = json.loads(self.store.read_bytes(LEASE_FILE))
        except FileNotFoundError:
            return None
        except (
            ValueError
        ):  # cut short: whoever wrote it is gone mid-write or it was damaged; not a live driver
            return None
        return info if isinstance(info, dict) else None

    def _describe(self, info: dict, age: float) -> str:
        return f"driver pid {info.get('pid')} on {info.get('host')} (heartbeat {age:.0f}s ago)"

    def live_holder(self, info: dict | None, *, announce: bool = False) -> str | None:
        """A one-line description of the live driver holding the lease `info`, or None if it can be taken."""
        if not info or info.get("token") == self.token:
            return None
        age = time.time() - float(info.get("heartbeat") or 0)
        if (
            info.get("host") == self.host
            and isinstance(info.get("pid"), int)
            and not process_alive(info["pid"])
        ):
            return None
        stale = STALE_BEATS * float(info.get("beat_s") or self.beat_s)
        if age > stale:
            if announce:
                self.progress(f"lease: taking over the run from {self._describe(info, age)}; it is gone")
            return None
        return self._describe(info, age)

    def check_free(self) -> None:
        """RunError naming the live driver that holds the run, if one does (nothing is taken)."""
        holder = self.live_holder(self._read())
        if holder is not None:
            raise self._refusal(holder)

    def _refusal(self, holder: str) -> RunError:
        return RunError(
            f"{self.store.uri} is being run by {holder}; wait for it to end or stop it (Ctrl-C, "
            f"`hpo stop`), then `hpo resume {self.store.uri}`; a lease whose heartbeat is "
            f"{STALE_BEATS * self.beat_s:.0f}s old is taken over"
        )

    # -- holding -----------------------------------------------------------------------------------------------
    def _write(self) -> None:
        info = {
            "host": self.host,
            "pid": self.pid,
            "token": self.token,
            "heartbeat": time.time(),
            "beat_s": self.beat_s,
        }
        self.store.write_bytes(LEASE_FILE, json.dumps(info).encode())

    def acquire(self, *, reachable: bool = True) -> None:
        """Take the lease, or raise RunError naming the live driver that holds it. A store that does not answer
        (`reachable` False: its preflight said so) cannot say whether another driver holds the run: the run goes
        on, spooling as it does through any outage, and its heartbeat writes the lease once the store answers."""
        holder = None
        try:
            if reachable:
                holder = self.live_holder(self._read(), announce=True)
                if holder is None:
                    self._write()
                    if self.settle:
                        self._stop.wait(SETTLE_S)
                    now = self._read()
                    if now is not None and now.get("token") != self.token:
                        holder = self._describe(now, time.time() - float(now.get("heartbeat") or 0))
        except StoreError as error:
            self.progress(f"lease: cannot check that no other driver runs this run ({error})")
        if holder is not None:
            raise self._refusal(holder)
        self._thread = threading.Thread(target=self._beat, name="hpo-run-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                info = self._read()
                if info is not None and info.get("token") != self.token:
                    self.lost = True
                    self.on_lost(
                        f"another driver took over this run ({info.get('host')}, pid {info.get('pid')}) while "
                        "this one could not reach its storage"
                    )
                    return
                self._write()
            except (
                Exception
            ):  # the store does not answer: keep beating; a long silence lets another take over
                continue

    def release(self) -> None:
        """Stop beating and delete the lease if it is still ours (a store that does not answer keeps it: it goes
        stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost:
            return
        try:
            info = self._read()
            if info is None or info.get("token") == self.token:
                self.store.delete(LEASE_FILE)
        except Exception:
            pass

    def __enter__(self) -> RunLease:
        self.acquire(reachable=self.reachable)
        return self

    def __exit__(self, *exc) -> None:
        self.release()
