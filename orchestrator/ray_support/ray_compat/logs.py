"""Ray's logging: worker output relayed to the driver, and Ray's loggers made to say a failure in one line."""

from __future__ import annotations

import logging

from orchestrator.ray_support.ray_compat.patching import patched, until_undone

# Ray 2.60 stops a worker it no longer needs (its job ended, its trial's placement group removed) with SIGTERM,
# whose handler (`sigterm_handler` in worker.py's main_loop) raises SystemExit. Arriving while the worker runs
# a weakref or garbage-collector callback, that SystemExit cannot be raised there: Python prints "Exception
# ignored in: ..." with a traceback and "SystemExit: 1" to the worker's stderr, and Ray relays it to the
# driver's, where a user reads it as an error of their run (seen once at the end of a successful `hpo run`).
PRINT_LOGS_HANDLER = "ray_print_logs"  # Ray 2.60: the name worker.connect gives the driver's relay handler


def without_stop_noise(lines: list[str]) -> list[str]:
    """`lines` of a worker's stderr without the blocks Python printed for a SystemExit from Ray's SIGTERM
    handler that it could not raise; anything else, another ignored exception included, is kept."""
    kept, i = [], 0
    while i < len(lines):
        if lines[i].startswith("Exception ignored"):
            end = i + 1  # the traceback's lines, indented (or blank), up to the exception's own line
            while end < len(lines) and (lines[end].startswith(("Traceback", " ")) or not lines[end].strip()):
                end += 1
            if (
                end < len(lines)
                and lines[end].startswith("SystemExit")
                and any(line.endswith(", in sigterm_handler") for line in lines[i:end])
            ):
                i = end + 1
                continue
        kept.append(lines[i])
        i += 1
    return kept


def unfinished_block(lines: list[str]) -> int | None:
    """Where `lines` end inside an "Exception ignored" block (its traceback begun, its exception's own line not
    yet there): that block's first line; else None."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Exception ignored"):
            rest = lines[i + 1 :]
            if all(line.startswith(("Traceback", " ")) or not line.strip() for line in rest):
                return i
            return None
    return None


class QuietBatches:
    """Batches of workers' output as the driver's relay should print them: stderr without_stop_noise. Ray's log
    monitor sends what a worker's log file holds when it reads it, so on a loaded machine Python's block can
    arrive in two batches (seen: the traceback's first frames in one, `SystemExit: 1` in the next). A batch that
    ends inside such a block keeps that block back, per worker, until the worker's next batch completes it."""

    def __init__(self):
        self.held: dict[tuple, list[str]] = {}  # (node ip, pid) -> an unfinished block's lines

    def __call__(self, data: dict) -> dict | None:
        """The batch to print (None: nothing of it is left)."""
        lines = data.get("lines")
        if not (data.get("is_err") and lines):
            return data
        worker = (data.get("ip"), data.get("pid"))
        lines = self.held.pop(worker, []) + list(lines)
        if (start := unfinished_block(lines)) is not None:
            self.held[worker], lines = lines[start:], lines[:start]
        kept = without_stop_noise(lines)
        if not kept:
            return None
        return data if kept == data["lines"] else {**data, "lines": kept}


def quiet_worker_stops():
    """Ray 2.60: the driver's dispatcher of relayed worker output (`ray_logging
    .global_worker_stdstream_dispatcher`, whose `emit` the driver's log thread calls with each batch) hands its
    relay to the terminal (the handler named PRINT_LOGS_HANDLER) each batch without the stop noise above; every
    other handler gets the batch as it is. Returns the undo."""
    from ray._private.ray_logging import (
        global_worker_stdstream_dispatcher as dispatcher,
    )  # here, not at the top: a move breaks only this

    quiet = QuietBatches()

    def emit_quietly(data):  # Ray's WorkerStandardStreamDispatcher.emit, and the filter
        with dispatcher._lock:
            for name, handle in dispatcher.handlers:
                if name != PRINT_LOGS_HANDLER:
                    handle(data)
                elif (kept := quiet(data)) is not None:
                    handle(kept)

    return until_undone(patched(dispatcher, emit=emit_quietly))


class OneLineErrors(logging.Filter):
    """On a logger of Ray's: a record's traceback becomes its last line, appended to the message. What failed
    stays said; thirty lines of Ray's frames about it do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = (str(error).strip().splitlines() or [""])[0][:300]
            record.msg = f"{record.getMessage().rstrip(': ')}: {type(error).__name__}: {text}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True
