"""The load engine: raw records, summaries and the concurrency matrix."""

from roxy_triage.load.matrix import MatrixResult, run_matrix, with_overrides
from roxy_triage.load.records import ERROR_CLASSES, Record, iter_records, read_records
from roxy_triage.load.stats import ClientUsage, Distribution, LevelSummary, summarize
from roxy_triage.load.table import render_table

__all__ = [
    "ERROR_CLASSES",
    "ClientUsage",
    "Distribution",
    "LevelSummary",
    "MatrixResult",
    "Record",
    "iter_records",
    "read_records",
    "render_table",
    "run_matrix",
    "summarize",
    "with_overrides",
]
