"""The watchdog: a trial that reports nothing for train.trial_timeout_s (a hung collective, a worker group that
never starts) is stopped, and counts as failed with the reason in trials.parquet; the job goes on."""

from __future__ import annotations

import logging
import time

import ray

from orchestrator.execution.ray_compat import (
    TUNE_CONTROLLER_LOGGER,
    trial_actor,
    trial_failed_message,
    trial_name,
)


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
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.last_seen: dict[str, float] = {}  # trial -> monotonic time of its start or last report
        self.timed_out: dict[str, str] = {}  # trial -> why the watchdog stopped it
        self._quiet = _QuietWatchdogStops(self.timed_out)

    def started(self, name: str) -> None:
        self.last_seen[name] = time.monotonic()
        self.timed_out.pop(name, None)

    def reported(self, name: str) -> None:
        self.last_seen[name] = time.monotonic()

    def reason(self, name: str) -> str | None:
        return self.timed_out.get(name)

    def check(self, trials) -> list[tuple[str, str]]:
        """Stop every running trial silent for longer than the timeout; returns (trial, why) for each stopped now.
        Its actor is killed (a DDP trial's Train controller and workers go with it, their owner), and Tune treats
        the trial as failed."""
        now, stopped = time.monotonic(), []
        for trial in trials:
            name = trial_name(trial)
            since = self.last_seen.get(name)
            if (
                trial.status != "RUNNING"
                or since is None
                or now - since < self.timeout_s
                or name in self.timed_out
            ):
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
