"""The driver's side of PBT's steps (tuning/pbt.py): each trial learns where it continues from, a recipient finds
its donor's checkpoint in its own folder, and the tables and the progress output say who exploited whom.

All of it happens while every trial of the population waits (paused), so no trial can move its checkpoints
meanwhile: the donor's checkpoint of the step's epoch is copied as bytes (the driver never loads it: it never
imports torch), and the recipient makes it its own at its next start (TrialCheckpoints.adopt).
"""

from __future__ import annotations

from orchestrator.budget.attempts import record_continuation
from orchestrator.results.layout import adopted_checkpoint_file, checkpoint_file
from orchestrator.storage import Store
from orchestrator.tracking.tracker import RunTracker
from orchestrator.tuning.pbt import Step, SyncPbt


class PbtSteps:
    """SyncPbt's `on_step`: returns the moves that happen (a donor without a checkpoint of that epoch cannot be
    copied; its recipient continues its own training, and the progress output says why)."""

    def __init__(self, store: Store, results_uri: str, tracker: RunTracker):
        self.store, self.results_uri, self.tracker = store, results_uri, tracker

    def __call__(self, step: Step) -> dict[str, tuple[str, dict]]:
        moves = {}
        for name in sorted(step.participants):
            donor = None
            if name in step.moves:
                source = step.moves[name][0]
                try:
                    data = self.store.read_bytes(checkpoint_file(source, step.epoch))
                except FileNotFoundError:
                    self.tracker.progress.line(
                        f"{name} cannot continue from {source}: it stored no checkpoint of epoch {step.epoch} "
                        "(PBT copies one at every step: report a checkpoint every epoch)"
                    )
                else:
                    self.store.write_bytes(adopted_checkpoint_file(name, step.epoch), data)
                    donor, moves[name] = source, step.moves[name]
            record_continuation(self.results_uri, name, step.epoch, donor)
        self.tracker.pbt_step(step.number, step.epoch, moves)
        return moves


def wire_pbt(scheduler, store: Store, results_uri: str, tracker: RunTracker) -> None:
    """Connect a PBT scheduler to this run's store, trials and tables (other schedulers need nothing)."""
    if isinstance(scheduler, SyncPbt):
        scheduler.on_step = PbtSteps(store, results_uri, tracker)
        scheduler.on_pause = tracker.trial_paused
