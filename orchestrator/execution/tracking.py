"""The Tune callback on the driver: it turns Tune's events into rows and trial records (recorder.py), the best
row so far and progress lines (progress.py), and feeds the watchdog (watchdog.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ray.exceptions import RayActorError
from ray.tune import Callback
from ray.tune.stopper import Stopper

from orchestrator.errors import describe_traceback_text
from orchestrator.execution.attempts import BUDGET_SPENT, close_budget, forget, forget_budget, record_retry
from orchestrator.execution.ledger import Ledger
from orchestrator.execution.progress import BestRow, Progress
from orchestrator.execution.ray_compat import (
    contains_error,
    forget_trial_metrics,
    lost_node_error,
    node_gone,
    trial_error_file,
    trial_name,
    was_lost_node,
)
from orchestrator.execution.recorder import TrialRecorder
from orchestrator.execution.watchdog import Watchdog
from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.results.layout import ITERATION_KEY, TUNE_DIR


class RunTracker(Callback):
    def __init__(
        self,
        writer: ResultsWriter,
        schema: ResultsSchema,
        *,
        fixed: dict,
        max_epochs: int,
        num_trials: int,
        progress: Callable[[str], None],
        results_uri: str = "",
        max_retries: int = 0,
        trial_timeout_s: float = float("inf"),
        on_trial_end: Callable[..., None] = lambda name, *, failed: None,
        ledger: Ledger | None = None,
        stop_running: bool = False,
    ):
        self.stop_running = stop_running  # budget.stop_running: a spent budget stops running trials too
        self.results_uri = results_uri
        self.on_trial_end = on_trial_end  # the launcher's: a pool of worker groups frees the trial's group
        self.ledger = ledger
        self.recorder = TrialRecorder(writer, schema, fixed=fixed, max_epochs=max_epochs, ledger=ledger)
        self.best = BestRow(schema)
        self.progress = Progress(
            progress, schema, max_epochs=max_epochs, num_trials=num_trials, max_retries=max_retries
        )
        self.watchdog = Watchdog(trial_timeout_s)

    def __getstate__(self):
        # Tune pickles its whole config, callbacks included, into tuner.pkl for Tuner.restore, which hpo never
        # uses (hpo resume rebuilds the run). The driver's live state (the writer's locks, the progress
        # callback, every record) does not belong there, and a lock cannot be pickled at all.
        return {}

    @property
    def records(self) -> dict[str, dict]:
        return self.recorder.records

    def preload(self, rows: list[dict], records: list[dict]) -> None:
        """`hpo resume`: what the killed run already stored, so it is kept and never written twice."""
        self.recorder.preload(rows, records)
        if self.ledger is not None:
            self.ledger.preload(records)
        for row in rows:
            self.best.consider(row)

    # -- Tune hooks ---------------------------------------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        for name, why in self.watchdog.check():
            self.progress.line(f"{name} {why}")
        self._check_budget()
        self.recorder.sync()

    def on_trial_start(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        self.watchdog.started(name, trial)
        if self.ledger is not None:
            self.ledger.started(name)
        self.recorder.record(name, trial.config, "running")
        self.progress.trial_started(name, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if ITERATION_KEY not in result:  # Tune's bookkeeping results carry no metrics
            return
        name = trial_name(trial)
        self.watchdog.reported(name)
        row = self.recorder.add(name, trial.config, result)
        if row is not None:
            self.best.consider(row)
            self.progress.epoch(name, row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        self.watchdog.ended(name)
        self._ledger_ended(name)
        best = self.best.row  # as it is now, printed once the record is stored
        self.recorder.record(
            name,
            trial.config,
            "completed",
            announce=lambda record, done: self.progress.trial_completed(name, record, done, best),
        )
        forget_trial_metrics(trial)
        self.on_trial_end(name, failed=False)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial Tune will run again: tell its next attempt to continue from its last checkpoint."""
        name = trial_name(trial)
        self.on_trial_end(name, failed=True)
        self._ledger_ended(name)
        lost = was_lost_node(trial)
        attempt = self.recorder.retried(name, preempted=lost)
        record_retry(self.results_uri, name, attempt)
        self.recorder.record(name, trial.config, "running")
        from_checkpoint = name in self.recorder.checkpoints
        why = self._why(name, trial)
        if lost:
            self.progress.trial_preempted(
                name, self.recorder.preemptions[name], why, from_checkpoint=from_checkpoint
            )
        else:
            self.progress.trial_retried(
                name, self.recorder.retries[name], why, from_checkpoint=from_checkpoint
            )

    def on_trial_error(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        error = self._why(name, trial)
        self.watchdog.ended(name)
        self._ledger_ended(name)
        self.on_trial_end(name, failed=True)
        if BUDGET_SPENT in error:  # created before the budget was spent, ended at its start
            self.recorder.record(name, trial.config, "cancelled", error=BUDGET_SPENT)
            forget_trial_metrics(trial)
            return
        self.recorder.record(
            name,
            trial.config,
            "error",
            error=error,
            announce=lambda record, done: self.progress.trial_failed(name, error, done),
        )
        forget_trial_metrics(trial)

    def on_experiment_end(self, trials, **info):
        self.watchdog.close()
        for trial in trials:  # with fail_fast, Tune ends the others without telling callbacks
            name = trial_name(trial)
            if self.records.get(name, {}).get("status") == "running":
                why = "the job stopped before this trial finished (train.fail_fast, or an interrupt)"
                self.recorder.record(name, trial.config, "cancelled", error=why)
        self.recorder.sync(force=True)
        if self.recorder.retries or self.recorder.preemptions:
            forget(self.results_uri, list({**self.recorder.retries, **self.recorder.preemptions}))
        if self.ledger is not None and self.ledger.exhausted:
            forget_budget(self.results_uri)

    def is_lost_node(self, trial, error) -> bool:
        """For ray_compat.lost_nodes_not_counted: did this failure lose a node (not the trial's own fault)? Ray
        says so in the error, or the node the trial last reported from is dead or draining now."""
        if lost_node_error(error):
            return True
        return contains_error(error, RayActorError) and node_gone(self.recorder.nodes.get(trial_name(trial)))

    def _ledger_ended(self, name: str) -> None:
        if self.ledger is not None:
            self.ledger.ended(name)
            self._check_budget()

    def _check_budget(self) -> None:
        if self.ledger is None or self.ledger.exhausted:
            return
        if reached := self.ledger.check():
            close_budget(self.results_uri)
            running = sum(1 for r in self.records.values() if r["status"] == "running")
            self.progress.line(
                f"budget exhausted ({reached}): no new trial starts; {running} running trial(s) "
                + ("stop at their next report" if self.stop_running else "finish")
            )

    def _why(self, name: str, trial) -> str:
        return self.watchdog.reason(name) or _error_line(trial, name)


class BudgetStopper(Stopper):
    """Tune's stop condition for budget.stop_running: once the budget is spent, a running trial stops at its next
    report (as the scheduler would stop it). The search itself stops starting trials (fast_forward.py's gate)."""

    def __init__(self, tracker: RunTracker):
        self.tracker = tracker

    def __call__(self, trial_id, result) -> bool:
        if self.tracker is None:
            return False
        self.tracker._check_budget()
        return bool(self.tracker.ledger and self.tracker.ledger.exhausted and self.tracker.stop_running)

    def stop_all(self) -> bool:
        return False

    def __getstate__(self):
        return {"tracker": None}  # Tune pickles its config (tuner.pkl); the driver's live state stays here


class BudgetGate:
    """fast_forward.py's `closed` gate of the search: True once the budget is spent. Tune pickles the search
    algorithm with its config (tuner.pkl); the gate pickles as a closed-never one, without the driver's state."""

    def __init__(self, ledger: Ledger | None):
        self.ledger = ledger

    def __call__(self) -> bool:
        return self.ledger is not None and self.ledger.exhausted is not None

    def __getstate__(self):
        return {"ledger": None}


def _error_line(trial, name: str | None = None) -> str:
    """The trial's error in a line: the exception (the traceback's last line), where the user's code raised it
    and was entered (errors.describe_failure), and where the whole traceback is: Ray Tune's error file, under
    the run's `tune/<trial>/` (mirrored there at the end for a remote store)."""
    path = trial_error_file(trial) or ""
    text = ""
    try:
        text = open(path).read() if path else ""
    except OSError:
        pass
    line = describe_traceback_text(text)
    if not line:
        return "trial failed (no error recorded)"
    log = f"{TUNE_DIR}/{name}/{Path(path).name}" if name and Path(path).parent.name == name else path
    suffix = f" (full traceback: {log})"
    return line[: 500 - len(suffix)] + suffix
