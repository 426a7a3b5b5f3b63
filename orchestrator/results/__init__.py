"""Run results: where everything lives (layout.py), one schema (schema.py), one writer (writer.py), one reader
(reader.py), operations on stored runs (ops.py: pull, ls, sync, the stored spec) and summaries (summary.py)."""

from orchestrator.errors import ResultsDamaged, ResultsNotFound
from orchestrator.results.layout import RESULTS_DIR, TRIALS_FILE
from orchestrator.results.reader import best_row, config_of, load_results, load_trials, result_uris
from orchestrator.results.schema import (
    CONFIG_PREFIX,
    RUN_VARYING_COLUMNS,
    TIMING_COLUMNS,
    ResultsSchema,
    metric_columns,
)
from orchestrator.results.summary import RunSummary, format_config, summarize
from orchestrator.results.writer import ResultsWriter

__all__ = [
    "ResultsSchema",
    "ResultsWriter",
    "load_results",
    "load_trials",
    "result_uris",
    "best_row",
    "config_of",
    "metric_columns",
    "ResultsNotFound",
    "ResultsDamaged",
    "CONFIG_PREFIX",
    "TIMING_COLUMNS",
    "RUN_VARYING_COLUMNS",
    "RESULTS_DIR",
    "TRIALS_FILE",
    "RunSummary",
    "summarize",
    "format_config",
]
