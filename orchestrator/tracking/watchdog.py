"""The watchdog: a trial that reports nothing for train.trial_timeout_s (a hung collective, a worker group that
never starts) is stopped, and counts as failed with the reason in trials.parquet; the job goes on."""

from __future__ import annotations

import logging
import time

import ray

from orchestrator.ray_support.ray_compat import TUNE_CONTROLLER_LOGGER, trial_actor, trial_failed_message


class _QuietWatchdogStops(logging.Filter):
    """Tune logs 'Trial task failed' with an 'actor died unexpectedly' traceback for a trial the watchdog stopped:
    it reads as a crash, and the progress line and trials.parquet already say what happened."""

    def __init__(self, timed_out: dict[str, str]):
        super().__init__()
        self.timed_out = timed_out

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message == trial_failed_message(name) for name in self.timed_out)


class Watchdog:
    """Watches the running trials only (a job of 10,000 trials has a handful running), at most every
    `check_every_s`: the check runs at every step of Tune's loop."""

    def __init__(self, timeout_s: float, check_every_s: float = 1.0):
        self.timeout_s, self.check_every_s = timeout_s, check_every_s
        self.running: dict[
            str, tuple
        ] = {}  # trial -> (Tune trial, monotonic time of its start or last report)
        self.timed_out: dict[str, str] = {}  # trial -> why the watchdog stopped it
        self._quiet = _QuietWatchdogStops(self.timed_out)
        self._checked = float("-inf")

    def started(self, name: str, trial) -> None:
        self.running[name] = (trial, time.monotonic())
        self.timed_out.pop(name, None)

    def reported(self, name: str) -> None:
        if name in self.running:
            self.running[name] = (self.running[name][0], time.monotonic())

    def ended(self, name: str) -> None:
        self.running.pop(name, None)

    def reason(self, name: str) -> str | None:
        return self.timed_out.get(name)

    def check(self) -> list[tuple[str, str]]:
        """Stop every running trial silent for longer than the timeout; returns (trial, why) for each stopped now.
        Its actor is killed (its Train workers or its warm worker group go with it: see launch/pool/), and
        Tune treats the trial as failed."""
        now, stopped = time.monotonic(), []
        if self.timeout_s == float("inf") or now - self._checked < self.check_every_s:
            return stopped
        self._checked = now
        for name, (trial, since) in list(self.running.items()):
            if trial.status != "RUNNING" or now - since < self.timeout_s or name in self.timed_out:
                continue
            actor = trial_actor(trial)
            if actor is None:
                continue
            self.timed_out[name] = (
                f"no report for {now - since:.0f} s (train.trial_timeout_s = "
                f"{self.timeout_s:g}): the trial was stopped"
            )
            logging.getLogger(TUNE_CONTROLLER_LOGGER).addFilter(self._quiet)  # once: a logger keeps a set
            ray.kill(actor, no_restart=True)
            stopped.append((name, self.timed_out[name]))
        return stopped

    def close(self) -> None:
        logging.getLogger(TUNE_CONTROLLER_LOGGER).removeFilter(self._quiet)
