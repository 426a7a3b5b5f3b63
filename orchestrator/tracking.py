"""The Tune callback on the driver: feeds every result to the results writer and prints progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ray.tune import Callback

from orchestrator.attempts import forget, record_retry
from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.summary import format_config
from orchestrator.trial import trial_name

TUNE_CONTROLLER_LOG = logging.getLogger("ray.tune.execution.tune_controller")


class _QuietWatchdogStops(logging.Filter):
    """Tune logs 'Trial task failed' with an 'actor died unexpectedly' traceback for a trial the watchdog stopped:
    it reads as a crash, and the progress line and trials.parquet already say what happened."""

    def __init__(self, timed_out: dict[str, str]):
        super().__init__()
        self.timed_out = timed_out

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message == f"Trial task failed for trial {name}" for name in self.timed_out)


class RunTracker(Callback):
    """Turns Tune events into result rows, trial records and one progress line per event worth seeing."""

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
    ):
        self.writer, self.schema, self.max_epochs, self.num_trials = writer, schema, max_epochs, num_trials
        self.results_uri, self.max_retries = results_uri, max_retries
        self.retries: dict[str, int] = {}  # trial -> retries so far
        self.trial_timeout_s = trial_timeout_s
        self.last_seen: dict[str, float] = {}  # trial -> monotonic time of its start or last report
        self.timed_out: dict[str, str] = {}  # trial -> why the watchdog stopped it
        self._quiet_stops = _QuietWatchdogStops(self.timed_out)
        self.fixed = dict(fixed)
        self.progress = progress
        self.rows: dict[str, list[dict]] = {}
        self.records: dict[str, dict] = {}
        self.checkpoints: dict[str, tuple] = {}  # trial -> (latest, best) checkpoint URIs
        self.nodes: dict[str, str] = {}  # trial -> Ray node id that reported its results
        self.best: dict | None = None
        self.started = time.monotonic()

    def preload(self, rows: list[dict], records: list[dict]) -> None:
        """`hpo resume`: what the killed run already stored, so it is kept and never written twice."""
        for row in sorted(rows, key=lambda r: (r["trial_id"], r["iteration"])):
            kept = self.rows.setdefault(row["trial_id"], [])
            if not kept or kept[-1]["iteration"] < row["iteration"]:
                kept.append(row)
            self._consider_best(row)
        for record in records:
            self.records[record["trial_id"]] = record
            self.retries[record["trial_id"]] = record.get("retries") or 0
            if record.get("node_id"):
                self.nodes[record["trial_id"]] = record["node_id"]
            if record.get("checkpoint"):
                self.checkpoints[record["trial_id"]] = (record["checkpoint"], record.get("best_checkpoint"))

    # -- Tune hooks ---------------------------------------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        """The watchdog: stop a running trial that has reported nothing for trial_timeout_s. Its actor is killed
        (a DDP trial's Train controller and workers go with it, their owner), and Tune treats it as failed."""
        now = time.monotonic()
        for trial in trials:
            name = trial_name(trial)
            since = self.last_seen.get(name)
            if (
                trial.status != "RUNNING"
                or since is None
                or now - since < self.trial_timeout_s
                or name in self.timed_out
            ):
                continue
            actor = trial.temporary_state.ray_actor
            if actor is None:
                continue
            import ray

            self.timed_out[name] = (
                f"no report for {now - since:.0f} s (train.trial_timeout_s = "
                f"{self.trial_timeout_s:g}): the trial was stopped"
            )
            self.progress(f"{self._clock()} {name} {self.timed_out[name]}")
            TUNE_CONTROLLER_LOG.addFilter(self._quiet_stops)  # once: a logger keeps a set of filters
            ray.kill(actor, no_restart=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        self.last_seen[name] = time.monotonic()
        self.timed_out.pop(name, None)
        self._record(name, trial, "running")
        self.progress(f"{self._clock()} {name} started  {format_config(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:  # Tune's bookkeeping results carry no metrics
            return
        name = trial_name(trial)
        self.last_seen[name] = time.monotonic()
        rows = self.rows.setdefault(name, [])
        if rows and rows[-1]["iteration"] >= int(result["epoch"]):
            return  # a repeated report (e.g. a restored trial) is not a new row
        row = self.schema.row(name, result, {**self.fixed, **trial.config})
        rows.append(row)
        self.writer.add(row)
        if result.get("node_id"):
            self.nodes[name] = result["node_id"]
        if result.get("checkpoint"):
            self.checkpoints[name] = (result["checkpoint"], result.get("best_checkpoint"))
        self._consider_best(row)
        extra = "  ".join(f"{m}={row[m]:.4f}" for m in self.schema.metrics if row.get(m) is not None)
        self.progress(f"{self._clock()} {name} epoch {row['iteration']:>3}/{self.max_epochs}  {extra}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        self.writer.flush()  # rows first: a stored "completed" record must never precede its rows (hpo resume)
        record = self._record(name, trial, "completed")
        how = "stopped by ASHA" if record["stopped_early"] else "completed"
        metric = self.schema.metric
        best = record[f"best_{metric}"]
        shown = f"best {metric}={best:.4f}" if best is not None else "no metric"
        job_best = f"; job best {self.best['trial_id']} {self.best[metric]:.4f}" if self.best else ""
        self.progress(
            f"{self._clock()} {name} {how} after {record['iterations']} epoch(s), {shown}  "
            f"[{self._done()}/{self.num_trials} trials done{job_best}]"
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial Tune will run again: tell its next attempt to continue from its last checkpoint."""
        name = trial_name(trial)
        self.retries[name] = self.retries.get(name, 0) + 1
        record_retry(self.results_uri, name, self.retries[name])
        self._record(name, trial, "running")
        self.progress(
            f"{self._clock()} {name} failed, retry {self.retries[name]} of {self.max_retries} from its "
            f"last checkpoint: {self._why(name, trial)}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        name = trial_name(trial)
        error = self._why(name, trial)
        self.writer.flush()
        self._record(name, trial, "error", error=error)
        self.progress(
            f"{self._clock()} {name} FAILED: {error}  [{self._done()}/{self.num_trials} trials done]"
        )

    def on_experiment_end(self, trials, **info):
        TUNE_CONTROLLER_LOG.removeFilter(self._quiet_stops)
        for trial in trials:  # with fail_fast, Tune ends the others without telling callbacks
            name = trial_name(trial)
            if self.records.get(name, {}).get("status") == "running":
                why = "the job stopped before this trial finished (train.fail_fast, or an interrupt)"
                self._record(name, trial, "cancelled", error=why)
        self.writer.flush()
        if self.retries:
            forget(self.results_uri, list(self.retries))

    def all_rows(self) -> list[dict]:
        return [row for name in sorted(self.rows) for row in self.rows[name]]

    # -- helpers ------------------------------------------------------------------------------------------
    def _record(self, name: str, trial, status: str, error: str | None = None) -> dict:
        record = self.schema.trial_record(
            name,
            status,
            self.rows.get(name, []),
            {**self.fixed, **trial.config},
            self.max_epochs,
            self.checkpoints.get(name, (None, None)),
            error,
            self.nodes.get(name),
            self.retries.get(name, 0),
        )
        self.records[name] = record
        self.writer.write_trials(list(self.records.values()))
        return record

    def _why(self, name: str, trial) -> str:
        return self.timed_out.get(name) or _error_line(trial)

    def _consider_best(self, row: dict) -> None:
        metric, value = self.schema.metric, row.get(self.schema.metric)
        if value is not None and (self.best is None or self._better(value, self.best[metric])):
            self.best = row

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.schema.mode == "min" else a > b

    def _done(self) -> int:
        return sum(r["status"] != "running" for r in self.records.values())

    def _clock(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"[{s // 60:02d}:{s % 60:02d}]"


def _error_line(trial) -> str:
    """The last line of the trial's error (the exception), without the traceback."""
    path = getattr(trial, "error_file", None) or ""
    text = ""
    try:
        text = open(path).read() if path else ""
    except OSError:
        pass
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "trial failed (no error recorded)"
