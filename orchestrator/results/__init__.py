"""Run results: one schema (schema.py), one writer (writer.py), one reader (reader.py)."""

from orchestrator.results.reader import ResultsNotFound, best_row, config_of, load_results, load_trials
from orchestrator.results.schema import CONFIG_PREFIX, RUN_VARYING_COLUMNS, TIMING_COLUMNS, ResultsSchema
from orchestrator.results.writer import RESULTS_DIR, TRIALS_FILE, ResultsWriter

__all__ = [
    "ResultsSchema",
    "ResultsWriter",
    "load_results",
    "load_trials",
    "best_row",
    "config_of",
    "ResultsNotFound",
    "CONFIG_PREFIX",
    "TIMING_COLUMNS",
    "RUN_VARYING_COLUMNS",
    "RESULTS_DIR",
    "TRIALS_FILE",
]
