"""The pool's coordinator (an async actor, one per run): the queue of trial attempts waiting for a group, the slots,
the relay of every report from a group's rank 0 to the Tune trial that owns it (and Tune's answer back), and the
driver's handle (start_pool). See launch/pool/__init__.py for how the pieces fit."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import secrets
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.launch.pool.group_host import new_host
from orchestrator.launch.protocol import GO_ON, NAMESPACE, STOP, GroupFailure
from orchestrator.ray_support.ray_compat import (
    lost_node_error,
    node_gone,
    on_the_head,
)
from orchestrator.train.plan import TrialPlan

# How long a group whose rank's process died waits for the GCS to say whether that rank's node died (its health
# checks: Ray 2.60's default period 3 s x 5 failures, after a 5 s initial delay), before counting a failure.
NODE_VERDICT_S = float(os.environ.get("HPO_NODE_VERDICT_S", "40"))


@dataclasses.dataclass
class TrialAttempt:
    """One attempt of a trial, from its Tune trial's submit to its last event (a retry is a new attempt, with a
    new token)."""

    token: str
    name: str
    hp: dict
    seed: int
    attempt: int
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)  # to the Tune trial
    answer: asyncio.Future | None = None  # the pending report's answer, while rank 0 waits for it
    slot: int | None = None
    ended: bool = False
    stop_requested: bool = False
    reports: int = 0

    def work(self) -> dict:
        return {
            "token": self.token,
            "name": self.name,
            "hp": self.hp,
            "seed": self.seed,
            "attempt": self.attempt,
        }


@dataclasses.dataclass
class _Slot:
    id: int
    host: Any  # the GroupHost actor
    generation: int  # the how-many-th group of this host
    inboxes: list[asyncio.Queue]  # per rank: the next trial (a dict) or None to leave
    trial: TrialAttempt | None = None
    runs: int = 0  # trials this group has started
    nodes: dict[int, str] = dataclasses.field(default_factory=dict)  # rank -> the node it runs on


class PoolCoordinator:
    """One per run: see the module docstring. Every method is a coroutine on one event loop, so no locks."""

    def __init__(self, name: str, plan: TrialPlan, max_slots: int):
        self.name, self.plan, self.max_slots = name, plan, max(1, max_slots)
        self.attempts: dict[str, TrialAttempt] = {}  # token -> the attempt
        self.by_name: dict[str, TrialAttempt] = {}  # trial name -> its latest attempt
        self.waiting: collections.deque[TrialAttempt] = collections.deque()
        self.slots: dict[int, _Slot] = {}
        self.spare_hosts: list = []  # hosts whose group ended, to start the next group on
        self.next_slot = 0
        self.closing = False
        self.stats = {"groups_started": 0, "groups_failed": 0, "trials": 0, "reused": 0, "why": []}

    # -- the Tune trial's side ---------------------------------------------------------------------------------
    async def submit(self, name: str, hp: dict, seed: int, attempt: int) -> str:
        """Queue a trial attempt for the next free group; returns its token. A newer attempt of the same trial
        means the older one is over as far as Tune knows (a retry after a failure, a watchdog stop): end it."""
        if (old := self.by_name.get(name)) is not None and not old.ended:
            await self._end(old, failed=True, why="superseded by a newer attempt")
        trial = TrialAttempt(secrets.token_hex(6), name, dict(hp), int(seed), int(attempt))
        self.attempts[trial.token], self.by_name[name] = trial, trial
        self.waiting.append(trial)
        self._dispatch()
        return trial.token

    async def next_event(self, token: str, answered: int | None = None) -> tuple[str, Any]:
        """The trial's next event: ("row", metrics), ("done", None) or ("failed", a GroupFailure). `answered`:
        the iteration Tune has just taken (its tune.report returned), so the worker may go on."""
        trial = self.attempts[token]
        if answered is not None and trial.answer is not None and not trial.answer.done():
            trial.answer.set_result(GO_ON)
        return await trial.events.get()

    async def end(self, name_or_token: str, failed: bool = False) -> None:
        """Tune is done with the trial (the scheduler stopped it, it failed, the watchdog killed it): a stop at a
        report goes back to its worker as STOP; a trial stopped anywhere else, or failed, takes its group down."""
        trial = self.attempts.get(name_or_token) or self.by_name.get(name_or_token)
        if trial is not None and not trial.ended:
            await self._end(trial, failed=failed, why="ended by Tune")

    # -- the workers' side ---------------------------------------------------------------------------------
    async def next_work(self, slot_id: int, rank: int, node_id: str = "") -> dict | None:
        """A rank of slot `slot_id` (on node `node_id`) is free: its next trial (the same for every rank), or None
        to leave."""
        slot = self.slots.get(slot_id)
        if slot is None:
            return None
        slot.nodes[rank] = node_id
        return await slot.inboxes[rank].get()

    async def report(self, token: str, row: dict) -> str:
        """Rank 0's report: relayed to the Tune trial; returns GO_ON once Tune has taken it, or STOP."""
        trial = self.attempts.get(token)
        if trial is None or trial.ended or trial.stop_requested:
            return STOP
        trial.reports += 1
        trial.answer = asyncio.get_running_loop().create_future()
        await trial.events.put(("row", row))
        return await trial.answer

    async def finished(self, slot_id: int, token: str, stopped: bool) -> None:
        """Rank 0 is done with the trial (it returned, or stopped at a report)."""
        trial, slot = self.attempts.get(token), self.slots.get(slot_id)
        if trial is not None and not trial.ended:
            await self._finish(trial, ("done", None))
        if slot is not None and slot.trial is not None and slot.trial.token == token:
            slot.trial = None
        self._dispatch()

    async def group_ended(
        self, slot_id: int, failure: GroupFailure | None, *, host_alive: bool = True
    ) -> None:
        """The slot's TorchTrainer.fit() returned (the pool closing) or raised (`failure`)."""
        slot = self.slots.pop(slot_id, None)
        if slot is None:
            return
        trial = slot.trial
        if failure is not None and not failure.final and not failure.lost:
            # Was a node lost? Ray does not always say: a rank's peers often report first, with only a broken
            # connection to show (gloo: "Connection closed by peer"). So ask the ranks' nodes (a live one answers
            # in a second or two); one that does not is dead once the GCS's health checks give up on it (Ray 2.60
            # defaults: ~15-30 s). A lost node is retried without counting as a failure.
            if await self._node_lost(slot):
                last = failure.message.strip().splitlines()[-1] if failure.message.strip() else "it failed"
                failure = GroupFailure(
                    False, f"{failure.message}\nthe worker group lost a node ({last})", True
                )
        if failure is not None:
            self._lost(trial, failure.message)
        if trial is not None and not trial.ended:
            if trial.answer is not None and not trial.answer.done():
                trial.answer.set_result(STOP)
            await self._finish(
                trial, ("failed", failure or GroupFailure(False, "the worker group ended", False))
            )
        if host_alive and not self.closing:
            self.spare_hosts.append(slot.host)
        self._dispatch()

    # -- the driver's side -------------------------------------------------------------------------------
    async def close(self, timeout_s: float = 30.0) -> dict:
        """End every group cleanly: a trial still at a report is stopped there and given time to unwind, then
        each rank is told to leave (fit() returns, Ray Train releases its placement group). A group still busy
        after `timeout_s` is killed. Returns the pool's counts."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        for slot in [s for s in self.slots.values() if s.runs == 0]:  # opened early, never given a trial
            del self.slots[slot.id]
            ray.kill(slot.host, no_restart=True)  # its controller, workers and placement group go with it
        for trial in list(self.waiting):
            await self._end(trial, failed=True, why="the job ended before it started")
        for slot in list(self.slots.values()):
            if slot.trial is not None:
                await self._end(slot.trial, failed=False, why="the job ended")  # stops it at its report
        while any(s.trial is not None for s in self.slots.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in list(self.slots.values()):
            if slot.trial is not None:  # still training after the job ended: it cannot be stopped cleanly
                await self._end(slot.trial, failed=True, why="still running when the job ended")
        for slot in list(self.slots.values()):
            for inbox in slot.inboxes:
                inbox.put_nowait(None)
        while self.slots and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in list(self.slots.values()):
            ray.kill(slot.host, no_restart=True)
        for host in self.spare_hosts:
            ray.kill(host, no_restart=True)
        return dict(self.stats)

    async def open(self) -> dict:
        """Start the first group now, while Tune sets up and starts the first trial's process: a cold group takes
        10-20 s on a small machine, and the first trial would otherwise wait for all of it. A job that never
        hands it a trial (every trial cancelled, a budget spent) loses it at close() without waiting for it."""
        if not self.slots and not self.closing:
            self._start_group()
        return dict(self.stats)

    # -- inside --------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self.waiting and not self.closing:
            slot = next((s for s in self.slots.values() if s.trial is None), None)
            if slot is None and len(self.slots) < self.max_slots:
                slot = self._start_group()
            if slot is None:
                return
            trial = self.waiting.popleft()
            trial.slot, slot.trial = slot.id, trial
            slot.runs += 1
            self.stats["trials"] += 1
            if slot.runs > 1:
                self.stats["reused"] += 1
            for inbox in slot.inboxes:
                inbox.put_nowait(trial.work())

    def _start_group(self) -> _Slot:
        slot_id, self.next_slot = self.next_slot, self.next_slot + 1
        host = self.spare_hosts.pop() if self.spare_hosts else new_host()
        slot = _Slot(
            slot_id, host, self.stats["groups_started"], [asyncio.Queue() for _ in range(self.plan.workers)]
        )
        self.slots[slot_id] = slot
        self.stats["groups_started"] += 1
        ref = host.run.remote(self.name, slot_id, self.plan, slot.generation)
        asyncio.get_running_loop().create_task(self._watch(slot_id, ref))
        return slot

    def _lost(self, trial: TrialAttempt | None, why: str) -> None:
        self.stats["groups_failed"] += 1
        if len(self.stats["why"]) < 20:
            self.stats["why"].append(
                f"{trial.name if trial else 'no trial'}: {why.strip().splitlines()[-1][:200]}"
            )

    async def _node_lost(self, slot: _Slot) -> bool:
        """Whether a node of `slot`'s ranks is dead or draining. A node that runs a task at once is alive (a rank
        whose process alone died, e.g. OOM-killed: answered in a second or two); for one that does not, wait up
        to NODE_VERDICT_S for the GCS's verdict."""
        nodes = sorted({n for n in slot.nodes.values() if n})
        if await asyncio.to_thread(lambda: any(node_gone(n) for n in nodes)):
            return True
        silent = [
            n
            for n, ok in zip(nodes, await asyncio.gather(*(_answers(n) for n in nodes)), strict=True)
            if not ok
        ]
        deadline = time.monotonic() + NODE_VERDICT_S
        while silent:
            if await asyncio.to_thread(lambda: any(node_gone(n) for n in silent)):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(1.0)
        return False

    async def _watch(self, slot_id: int, ref) -> None:
        try:
            error, alive = await ref, True
        except Exception as died:  # the host itself died: killed (a hung group), or its node was lost
            why = f"the worker group's host died ({type(died).__name__}: {died})"
            error, alive = GroupFailure(False, why, lost_node_error(died)), False
        await self.group_ended(slot_id, error, host_alive=alive)

    async def _finish(self, trial: TrialAttempt, event: tuple) -> None:
        """End `trial` with its last event; forget it a minute later (its Tune trial, if still listening, reads the
        event before then)."""
        trial.ended = True
        await trial.events.put(event)
        if self.by_name.get(trial.name) is trial:
            del self.by_name[trial.name]
        asyncio.get_running_loop().call_later(60.0, self.attempts.pop, trial.token, None)

    async def _end(self, trial: TrialAttempt, *, failed: bool, why: str) -> None:
        if trial.ended:
            return
        if trial in self.waiting:
            self.waiting.remove(trial)
            await self._finish(trial, ("failed", GroupFailure(True, why, False)))
            return
        if trial.answer is not None and not trial.answer.done():
            # at a report: the group is in a clean state, the worker stops there and takes the next trial
            trial.answer.set_result(STOP)
            trial.stop_requested = True
            return
        if not failed:
            trial.stop_requested = True  # the next report answers STOP
            return
        await self._finish(trial, ("failed", GroupFailure(True, why, False)))
        slot = self.slots.get(trial.slot) if trial.slot is not None else None
        if slot is not None and slot.trial is trial:
            # failed between reports (a hung trial the watchdog stopped, a failure Tune saw first): the training
            # code cannot be interrupted safely, so the group goes; the next trial gets a fresh one
            self.slots.pop(slot.id, None)
            self._lost(trial, why)
            ray.kill(slot.host, no_restart=True)
            self._dispatch()


@ray.remote(num_cpus=0)
class _PoolCoordinatorActor(PoolCoordinator):
    pass


@ray.remote(num_cpus=0, max_retries=0)
def _here() -> bool:
    return True


async def _answers(node_id: str, timeout_s: float = 10.0) -> bool:
    """Whether node `node_id` runs a task within `timeout_s`."""
    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    try:
        return await asyncio.wait_for(_here.options(scheduling_strategy=strategy).remote(), timeout_s)
    except Exception:
        return False


# -- the driver's handle ------------------------------------------------------------------------------------
def start_pool(plan: TrialPlan, max_slots: int, run_id: str) -> tuple[str, Any]:
    """Start a run's coordinator and its first group. Returns (name, handle)."""
    name = f"pool-{run_id}-{secrets.token_hex(3)}"
    handle = _PoolCoordinatorActor.options(
        name=name,
        namespace=NAMESPACE,
        max_concurrency=10_000,
        max_restarts=0,
        resources=on_the_head(),  # on the head (ray_compat.head_resource)
    ).remote(name, plan, max_slots)
    ray.get(handle.open.remote())  # up (and its first group starting) before any trial looks for it
    return name, handle


def connect(name: str):
    return ray.get_actor(name, namespace=NAMESPACE)
