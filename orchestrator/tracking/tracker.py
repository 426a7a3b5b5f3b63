"""The Tune callback on the driver: it turns Tune's events into rows and trial records (recorder.py), the best
row so far and progress lines (progress.py), and feeds the watchdog (watchdog.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ray.exceptions import RayActorError
from ray.tune import Callback
from ray.tune.stopper import Stopper

from orchestrator.budget.attempts import BUDGET_SPENT, close_budget, forget, forget_budget, record_retry
from orchestrator.budget.ledger import Ledger
from orchestrator.errors import describe_traceback_text
from orchestrator.ray_support.ray_compat import (
    contains_error,
    forget_trial_metrics,
    lost_node_error,
    node_gone,
    raised_in,
    trial_error_file,
    trial_name,
    was_lost_node,
)
from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.results.layout import ITERATION_KEY, TUNE_DIR
from orchestrator.results.schema import CHECKPOINT_FALLBACK
from orchestrator.results.summary import format_config
from orchestrator.stopping import DISK_FULL, FAILED, INTERRUPTED, StopRequest
from orchestrator.tracking.progress import BestRow, Progress
from orchestrator.tracking.recorder import TrialRecorder
from orchestrator.tracking.watchdog import Watchdog
from orchestrator.train.exceptions import ReportError, TrialDiskFull


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
        stop: StopRequest | None = None,
    ):
        # a signal or a broken report ends the run early (stopping.py)
        self.stop = stop if stop is not None else StopRequest()
        self.interrupted: set[str] = set()  # Tune ids of the trials the stop ended at a report
        self.configs: dict[str, dict] = {}  # trial -> its config, for the records close() writes
        self.max_epochs = max_epochs
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
        self.checkpoint_fallbacks = 0  # restores that passed over a damaged checkpoint (run.json counts them)
        self.paused: set[str] = set()  # PBT: trials waiting for the step, to start again

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
        self._announce_stop()
        self.recorder.sync()

    def _announce_stop(self) -> None:
        """Say once that the run is winding down (the signal handler only sets the request: printing from it
        could interrupt a print of the main thread's)."""
        stop = self.stop
        if not stop or stop.announced:
            return
        stop.announced = True
        running = self.running()
        if stop.reason == FAILED:
            self.progress.line(f"stopping the job: {stop.message}")
            return
        what = f"{stop.reason} by {_signal_name(stop.signal)}" if stop.signal else stop.reason
        self.progress.line(
            f"{what}: no new trial starts; {running} running trial(s) stop at their next report "
            f"(at most {stop.remaining():.0f}s); press Ctrl-C again to stop at once"
            if running
            else f"{what}: no new trial starts"
        )

    def running(self) -> int:
        """Trials this run started that have not ended (a resumed run's stored records of trials it has not
        started again do not count: nothing of theirs runs)."""
        return sum(1 for name, r in self.records.items() if r["status"] == "running" and name in self.configs)

    def on_trial_start(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        self.configs[name] = trial.config
        self.watchdog.started(name, trial)
        if self.ledger is not None:
            self.ledger.started(name)
        self.recorder.record(name, trial.config, "running")
        if name in self.paused:  # a PBT step's: it continues from its checkpoint (or a donor's)
            self.paused.discard(name)
            self.progress.line(f"{name} continues  {format_config(trial.config)}")
        else:
            self.progress.trial_started(name, trial.config)

    # -- PBT (tuning/pbt.py): trials pause at each step and start again -------------------------------------
    def trial_paused(self, name: str) -> None:
        """A trial waits for the PBT step in no process: nothing it holds is spent, no report is due."""
        self.paused.add(name)
        self.watchdog.ended(name)
        self._ledger_ended(name)

    def pbt_step(self, number: int, epoch: int, moves: dict[str, tuple[str, dict]]) -> None:
        """Rows after a step carry each recipient's donor and the step's epoch; said in one line each."""
        for recipient, (donor, _) in sorted(moves.items()):
            # (a resumed run's step taken before a trial started again: no config of it here yet)
            self.recorder.exploited(recipient, donor, epoch, self.configs.get(recipient))
        said = "; ".join(
            f"{recipient} <- {donor} ({format_config(config)})"
            for recipient, (donor, config) in sorted(moves.items())
        )
        self.progress.line(
            f"PBT step {number + 1} at epoch {epoch}: " + (said or "no trial exploits another")
        )

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if ITERATION_KEY not in result:  # Tune's bookkeeping results carry no metrics
            return
        name = trial_name(trial)
        self.watchdog.reported(name)
        if note := result.get(CHECKPOINT_FALLBACK):  # a restore passed over a damaged checkpoint
            self.checkpoint_fallbacks += 1
            self.progress.line(f"{name}: damaged checkpoint passed over: {note}")
        row = self.recorder.add(name, trial.config, result)
        if row is not None:
            self.best.consider(row)
            self.progress.epoch(name, row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        self.watchdog.ended(name)
        self._ledger_ended(name)
        best = self.best.row  # as it is now, printed once the record is stored
        if trial.trial_id in self.interrupted:  # the stop ended it at a report: resume continues it
            self.recorder.record(
                name,
                trial.config,
                INTERRUPTED,
                announce=lambda record, done: self.progress.trial_interrupted(name, record),
            )
        else:
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
        # a ReportError or a full disk: every trial would repeat it, so the job stops now (a full disk resumably)
        if (why := raised_in(error, ReportError)) is not None:
            self.stop.request(FAILED, message=f"{name}: {why}", grace_s=0.0)
        elif (why := raised_in(error, TrialDiskFull)) is not None:
            self.stop.request(DISK_FULL, message=why, grace_s=0.0)
            # not the trial's failure: it continues from its checkpoint on resume
            self.recorder.record(name, trial.config, INTERRUPTED, error=why)
            self.progress.line(f"{name} stopped: {why.removeprefix(name + ': ')}")
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
        self.close()

    def close(self) -> None:
        """The end of the search, also when Tune raised: no record stays `running`. With fail_fast or a stop,
        Tune ends the trials still running without telling callbacks."""
        if self.stop.signal:  # a signal the search ended on before its next step is said too
            self._announce_stop()
        self.watchdog.close()
        for name, record in list(self.records.items()):
            if record["status"] != "running":
                continue
            status, why = INTERRUPTED, None  # ended before its next report: resume continues it
            if not self.stop:
                status, why = "cancelled", "the job stopped before this trial finished (train.fail_fast)"
            if name not in self.configs:  # a resumed run's record of a trial this run never started
                self.recorder.set_status(name, status)
                continue
            self._ledger_ended(name)  # what it held ends here: the totals stop growing
            self.recorder.record(name, self.configs[name], status, error=why)
        self.recorder.sync(force=True)
        if self.recorder.schema.lineage:  # PBT: every trial has a continuation key
            forget(self.results_uri, list(self.configs))
        elif self.recorder.retries or self.recorder.preemptions:
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


class RunStopper(Stopper):
    """Tune's stop condition. A stop (stopping.py): a running trial stops at its next report that is not its
    last, and is recorded `interrupted`; once no trial runs, or the grace period is over, Tune ends everything
    left (trials it created but never started, trials still silent). budget.stop_running: once the budget is
    spent, a running trial stops at its next report (as the scheduler would stop it). In both cases the search
    itself stops starting trials (fast_forward.py's gate)."""

    def __init__(self, tracker: RunTracker):
        self.tracker = tracker

    def __call__(self, trial_id, result) -> bool:
        tracker = self.tracker
        if tracker is None:
            return False
        if tracker.stop and int(result.get(ITERATION_KEY, 0)) < tracker.max_epochs:
            tracker.interrupted.add(trial_id)
            return True
        tracker._check_budget()
        return bool(tracker.stop_running and tracker.ledger and tracker.ledger.exhausted)

    def stop_all(self) -> bool:
        tracker = self.tracker
        return bool(tracker and tracker.stop and (tracker.stop.overdue() or not tracker.running()))

    def __getstate__(self):
        return {"tracker": None}  # Tune pickles its config (tuner.pkl); the driver's live state stays here


class SearchGate:
    """fast_forward.py's `closed` gate of the search: True once the budget is spent or a stop was asked for.
    Tune pickles the search algorithm with its config (tuner.pkl); the gate pickles as a closed-never one,
    without the driver's state."""

    def __init__(self, ledger: Ledger | None, stop: StopRequest | None = None):
        self.ledger, self.stop = ledger, stop

    def __call__(self) -> bool:
        return bool(self.stop) or (self.ledger is not None and self.ledger.exhausted is not None)

    def __getstate__(self):
        return {"ledger": None, "stop": None}


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


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
