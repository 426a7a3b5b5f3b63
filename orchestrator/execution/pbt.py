"""The driver's side of PBT's steps (tuning/pbt.py): each trial learns where it continues from, a recipient finds
its donor's checkpoint in its own folder, and the tables and the progress output say who exploited whom.

All of it happens while every trial of the population waits (paused), so no trial can move its checkpoints
meanwhile: the donor's checkpoint of the step's epoch is copied as bytes (the driver never loads it: it never
imports torch), and the recipient makes it its own at its next start (TrialCheckpoints.adopt).
"""

from __future__ import annotations

import json

from orchestrator.budget.attempts import record_continuation
from orchestrator.errors import RunError
from orchestrator.results.layout import adopted_checkpoint_file, checkpoint_file, checkpoint_index
from orchestrator.results.schema import FINISHED
from orchestrator.storage.spool import SpoolingStore
from orchestrator.tracking.tracker import RunTracker
from orchestrator.tuning.pbt import Step, SyncPbt


class PbtSteps:
    """SyncPbt's `on_step`: returns the moves that happen (a donor without a checkpoint of that epoch cannot be
    copied; its recipient continues its own training, and the progress output says why).

    The rows up to the step are stored first (and uploaded, on a remote store): a resumed run takes the steps
    of the dead one again from them, so every step it took must find its scores there."""

    STORE_WAIT_S = 60.0

    def __init__(self, store: SpoolingStore, results_uri: str, tracker: RunTracker):
        self.store, self.results_uri, self.tracker = store, results_uri, tracker

    def __call__(self, step: Step) -> dict[str, tuple[str, dict]]:
        self.tracker.recorder.writer.flush()
        self.tracker.recorder.sync(force=True)
        self.store.drain(self.STORE_WAIT_S)
        moves = {}
        for name in sorted(step.participants):
            donor = None
            if name in step.moves and self._adopted(name, step.epoch, step.moves[name][0]):
                moves[name] = step.moves[name]  # a resumed run's step: the trial made it its own already
            elif name in step.moves:
                source = step.moves[name][0]
                try:
                    data = self.store.inner.read_bytes(checkpoint_file(source, step.epoch))
                except FileNotFoundError:
                    self.tracker.progress.line(
                        f"{name} cannot continue from {source}: it stored no checkpoint of epoch {step.epoch} "
                        "(PBT copies one at every step: report a checkpoint every epoch)"
                    )
                else:
                    self.store.inner.write_bytes(adopted_checkpoint_file(name, step.epoch), data)
                    donor, moves[name] = source, step.moves[name]
            record_continuation(self.results_uri, name, step.epoch, donor)
        self.tracker.pbt_step(step.number, step.epoch, moves)
        return moves

    def _adopted(self, trial: str, epoch: int, donor: str) -> bool:
        """Whether `trial` carried out this exploit before its run was killed (its checkpoint index says so, or
        it trained past the step)."""
        try:
            index = json.loads(self.store.inner.read_bytes(checkpoint_index(trial)))
        except FileNotFoundError:
            return False
        return index.get("adopted") == {"epoch": epoch, "donor": donor} or (index.get("latest") or 0) > epoch


def restore_pbt(
    scheduler, by_trial: dict[str, list[dict]], records: list[dict], tracker: RunTracker, progress
) -> None:
    """hpo resume of a PBT run: the scheduler takes again the steps the killed run had taken (from the stored
    rows: search/pbt.py's decisions are seeded), each trial continues with the config in force for its next
    epoch, and a trial that stopped at a step it exploited in carries that exploit out at its start."""
    if not isinstance(scheduler, SyncPbt):
        return
    ended = {r["trial_id"] for r in records if r["status"] in FINISHED or r["status"] == "error"}
    try:
        pending = scheduler.restore(by_trial, ended)
    except ValueError as error:
        raise RunError(f"cannot resume this PBT run: {error}") from None
    tracker.recorder.lineage.update(scheduler.lineage)
    for trial, (epoch, donor) in pending.items():
        # its donor's checkpoint waits at adopted_checkpoint_file, or the trial adopted it before the kill
        record_continuation(tracker.results_uri, trial, epoch, donor)
    progress(
        f"PBT: {scheduler.steps} step(s) taken again from the stored rows; the next at epoch {scheduler.next_epoch}"
    )


def wire_pbt(scheduler, store: SpoolingStore, results_uri: str, tracker: RunTracker) -> None:
    """Connect a PBT scheduler to this run's store, trials and tables (other schedulers need nothing)."""
    if isinstance(scheduler, SyncPbt):
        scheduler.on_step = PbtSteps(store, results_uri, tracker)
        scheduler.on_pause = tracker.trial_paused
        scheduler.on_arrival = lambda trial, result: tracker.on_trial_result(None, None, trial, result)
