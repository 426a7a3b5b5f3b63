"""Warm worker groups for multi-worker trials: one resident Ray Train TorchTrainer per concurrency slot, whose
workers run the job's trials one after another.

Ray Train starts a new worker group for every TorchTrainer.fit() (measured here: 20-30 s of a 2-worker trial's
start: actors, a process group, the torch import, the workload's data). A job's trials all ask for the same
workers, so a group can outlive its trial. The pieces:

- `PoolCoordinator` (an async actor, one per run): a queue of trials waiting for a group, the slots, and the
  relay of every report from a group's rank 0 to the Tune trial that owns the config (and Tune's answer back).
  It starts its first group as it opens, so that group's cold start overlaps Tune's setup.
- `GroupHost` (an actor per slot): calls `TorchTrainer.fit()` on `resident_worker`, and reports how it ended.
- `resident_worker` (each Ray Train worker): asks the coordinator for its slot's next trial, trains it with
  `train_trial` (the same code as a fresh group), and asks again.
- `relay` (the Tune function trainable of a multi-worker trial, launcher.py): submits its config, then turns
  each relayed report into `tune.report`; when that returns, Tune wants more, and the worker is told to go on.

A report waits for Tune's answer, as a Tune function trainable's does (synchronous reporting): a trial stopped
by the scheduler stops at that report, on every rank (rank 0 broadcasts the answer), by raising TrialStopped
through the training code, and the group takes the next trial. A trial that fails (a rank raises, a process or
node dies, the watchdog gives up on it) takes its group with it: Ray Train tears the workers down, the slot
starts a fresh group for the next trial, and no trial ever runs on a group that a failure may have left in a
bad state. Retries, resume and reproduce see exactly what a fresh group gives (the tests compare them).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import secrets
import time
import traceback
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.launch.protocol import GO_ON, NAMESPACE, STOP
from orchestrator.launch.torch_trainer import ddp_trainer
from orchestrator.ray_support.ray_compat import (
    contains_error,
    group_failure_line,
    lost_node_error,
    message_of,
    node_gone,
    on_the_head,
    preempted_error,
    train_knows_its_cluster,
)
from orchestrator.results.layout import ITERATION_KEY
from orchestrator.train.exceptions import FinalTrialError
from orchestrator.train.plan import TrialPlan

# How long a group whose rank's process died waits for the GCS to say whether that rank's node died (its health
# checks: Ray 2.60's default period 3 s x 5 failures, after a 5 s initial delay), before counting a failure.
NODE_VERDICT_S = float(os.environ.get("HPO_NODE_VERDICT_S", "40"))
# a report's answers


@dataclasses.dataclass
class _Job:
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
    job: _Job | None = None
    runs: int = 0  # trials this group has started
    nodes: dict[int, str] = dataclasses.field(default_factory=dict)  # rank -> the node it runs on


class PoolCoordinator:
    """One per run: see the module docstring. Every method is a coroutine on one event loop, so no locks."""

    def __init__(self, name: str, plan: TrialPlan, max_slots: int):
        self.name, self.plan, self.max_slots = name, plan, max(1, max_slots)
        self.jobs: dict[str, _Job] = {}  # token -> job
        self.by_name: dict[str, _Job] = {}  # trial name -> its latest job
        self.waiting: collections.deque[_Job] = collections.deque()
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
        job = _Job(secrets.token_hex(6), name, dict(hp), int(seed), int(attempt))
        self.jobs[job.token], self.by_name[name] = job, job
        self.waiting.append(job)
        self._dispatch()
        return job.token

    async def next_event(self, token: str, answered: int | None = None) -> tuple[str, Any]:
        """The trial's next event: ("row", metrics), ("done", None) or ("failed", (final, message)). `answered`:
        the iteration Tune has just taken (its tune.report returned), so the worker may go on."""
        job = self.jobs[token]
        if answered is not None and job.answer is not None and not job.answer.done():
            job.answer.set_result(GO_ON)
        return await job.events.get()

    async def end(self, name_or_token: str, failed: bool = False) -> None:
        """Tune is done with the trial (the scheduler stopped it, it failed, the watchdog killed it): a stop at a
        report goes back to its worker as STOP; a trial stopped anywhere else, or failed, takes its group down."""
        job = self.jobs.get(name_or_token) or self.by_name.get(name_or_token)
        if job is not None and not job.ended:
            await self._end(job, failed=failed, why="ended by Tune")

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
        job = self.jobs.get(token)
        if job is None or job.ended or job.stop_requested:
            return STOP
        job.reports += 1
        job.answer = asyncio.get_running_loop().create_future()
        await job.events.put(("row", row))
        return await job.answer

    async def finished(self, slot_id: int, token: str, stopped: bool) -> None:
        """Rank 0 is done with the trial (it returned, or stopped at a report)."""
        job, slot = self.jobs.get(token), self.slots.get(slot_id)
        if job is not None and not job.ended:
            await self._finish(job, ("done", None))
        if slot is not None and slot.job is not None and slot.job.token == token:
            slot.job = None
        self._dispatch()

    async def group_ended(
        self, slot_id: int, error: tuple[bool, str, bool] | None, *, host_alive: bool = True
    ) -> None:
        """The slot's TorchTrainer.fit() returned (the pool closing) or raised (`error`: final?, message, a lost
        node?)."""
        slot = self.slots.pop(slot_id, None)
        if slot is None:
            return
        job = slot.job
        if error is not None and not error[0] and not error[2]:
            # Was a node lost? Ray does not always say: a rank's peers often report first, with only a broken
            # connection to show (gloo: "Connection closed by peer"). So ask the ranks' nodes (a live one answers
            # in a second or two); one that does not is dead once the GCS's health checks give up on it (Ray 2.60
            # defaults: ~15-30 s). A lost node is retried without counting as a failure.
            if await self._node_lost(slot):
                last = error[1].strip().splitlines()[-1] if error[1].strip() else "it failed"
                error = (False, f"{error[1]}\nthe worker group lost a node ({last})", True)
        if error is not None:
            self._lost(job, error[1])
        if job is not None and not job.ended:
            final, message, lost = error or (False, "the worker group ended", False)
            if job.answer is not None and not job.answer.done():
                job.answer.set_result(STOP)
            await self._finish(job, ("failed", (final, message, lost)))
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
        for job in list(self.waiting):
            await self._end(job, failed=True, why="the job ended before it started")
        for slot in list(self.slots.values()):
            if slot.job is not None:
                await self._end(slot.job, failed=False, why="the job ended")  # stops it at its report
        while any(s.job is not None for s in self.slots.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in list(self.slots.values()):
            if slot.job is not None:  # still training after the job ended: it cannot be stopped cleanly
                await self._end(slot.job, failed=True, why="still running when the job ended")
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
            slot = next((s for s in self.slots.values() if s.job is None), None)
            if slot is None and len(self.slots) < self.max_slots:
                slot = self._start_group()
            if slot is None:
                return
            job = self.waiting.popleft()
            job.slot, slot.job = slot.id, job
            slot.runs += 1
            self.stats["trials"] += 1
            if slot.runs > 1:
                self.stats["reused"] += 1
            for inbox in slot.inboxes:
                inbox.put_nowait(job.work())

    def _start_group(self) -> _Slot:
        slot_id, self.next_slot = self.next_slot, self.next_slot + 1
        host = self.spare_hosts.pop() if self.spare_hosts else _new_host()
        slot = _Slot(
            slot_id, host, self.stats["groups_started"], [asyncio.Queue() for _ in range(self.plan.workers)]
        )
        self.slots[slot_id] = slot
        self.stats["groups_started"] += 1
        ref = host.run.remote(self.name, slot_id, self.plan, slot.generation)
        asyncio.get_running_loop().create_task(self._watch(slot_id, ref))
        return slot

    def _lost(self, job: _Job | None, why: str) -> None:
        self.stats["groups_failed"] += 1
        if len(self.stats["why"]) < 20:
            self.stats["why"].append(
                f"{job.name if job else 'no trial'}: {why.strip().splitlines()[-1][:200]}"
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
            error, alive = (False, why, lost_node_error(died)), False
        await self.group_ended(slot_id, error, host_alive=alive)

    async def _finish(self, job: _Job, event: tuple) -> None:
        """End `job` with its last event; forget it a minute later (its Tune trial, if still listening, reads the
        event before then)."""
        job.ended = True
        await job.events.put(event)
        if self.by_name.get(job.name) is job:
            del self.by_name[job.name]
        asyncio.get_running_loop().call_later(60.0, self.jobs.pop, job.token, None)

    async def _end(self, job: _Job, *, failed: bool, why: str) -> None:
        if job.ended:
            return
        if job in self.waiting:
            self.waiting.remove(job)
            await self._finish(job, ("failed", (True, why, False)))
            return
        if job.answer is not None and not job.answer.done():
            # at a report: the group is in a clean state, the worker stops there and takes the next trial
            job.answer.set_result(STOP)
            job.stop_requested = True
            return
        if not failed:
            job.stop_requested = True  # the next report answers STOP
            return
        await self._finish(job, ("failed", (True, why, False)))
        slot = self.slots.get(job.slot) if job.slot is not None else None
        if slot is not None and slot.job is job:
            # failed between reports (a hung trial the watchdog stopped, a failure Tune saw first): the training
            # code cannot be interrupted safely, so the group goes; the next trial gets a fresh one
            self.slots.pop(slot.id, None)
            self._lost(job, why)
            ray.kill(slot.host, no_restart=True)
            self._dispatch()


@ray.remote(num_cpus=0)
class _PoolCoordinatorActor(PoolCoordinator):
    pass


class GroupHost:
    """Calls TorchTrainer.fit() for one slot's group (as a Tune trial calls it for a fresh group)."""

    def run(self, pool: str, slot_id: int, plan: TrialPlan, generation: int) -> tuple[bool, str, bool] | None:
        # late: the workers train (torch); the driver, which creates this actor, never imports it
        from orchestrator.launch.trial_process import resident_worker

        trainer = ddp_trainer(
            resident_worker,
            {"pool": pool, "slot": slot_id, "plan": plan},
            plan,
            run_name=f"{pool}-slot{slot_id}-{generation}",
        )
        try:
            with train_knows_its_cluster():
                trainer.fit()
            return None
        except Exception as error:
            final = contains_error(error, FinalTrialError)
            return final, _describe(error, final), not final and lost_node_error(error)


_GroupHostActor = ray.remote(num_cpus=0)(GroupHost)


def _new_host():
    # on the head (ray_compat.head_resource); Ray Train puts the group's controller on its host's node
    return _GroupHostActor.options(max_restarts=0, resources=on_the_head()).remote()


def _describe(error: BaseException, final: bool) -> str:
    """The failure as the Tune trial raises it. A final error: its message (it says where). Anything else: the
    whole text of Ray Train's error (each failed rank's traceback), then one line saying what happened, which
    the trial's record and progress line show."""
    if final and (message := message_of(error, FinalTrialError)) is not None:
        return message
    text = "".join(traceback.format_exception(error))[-20_000:]
    return f"{text}\n{group_failure_line(error)}"


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


def relay(pool: str, name: str, hp: dict, seed: int, attempt: int, report) -> None:
    """In a multi-worker trial's Tune process: hand the trial to the pool, pass on its reports with `report`
    (tune.report), return when it is done, raise when it failed (FinalTrialError: not to be retried)."""
    coordinator = connect(pool)
    token = ray.get(coordinator.submit.remote(name, hp, seed, attempt))
    answered = None
    try:
        while True:
            kind, payload = ray.get(coordinator.next_event.remote(token, answered))
            if kind == "done":
                return
            if kind == "failed":
                final, message, lost = payload
                if lost:  # Tune retries it from its checkpoint without counting it (train.max_retries)
                    raise preempted_error(message)
                raise FinalTrialError(message) if final else WorkerGroupFailed(message)
            report(payload)  # returns when Tune wants the next report
            answered = payload[ITERATION_KEY]
    except (FinalTrialError, WorkerGroupFailed, ray.exceptions.RayActorError):
        raise
    except BaseException:  # Tune stopped the trial (SystemExit from tune.report) or the process is going
        coordinator.end.remote(token)
        raise


class WorkerGroupFailed(RuntimeError):
    """The worker group running this trial failed: a rank raised, or a process or node died. Tune retries the
    trial (train.max_retries) on a fresh group, from its last checkpoint."""
