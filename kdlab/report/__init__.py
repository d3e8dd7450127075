"""Validation metrics, results.json, and run summaries."""

from kdlab.report.metrics import accuracy, agreement, expected_calibration_error, latency_ms, mean_kl, predict
from kdlab.report.results import (
    REQUIRED_KEYS,
    RESULTS_FILE,
    divergence_warning,
    evaluate,
    finite_or_null,
    read_results,
    write_results,
)
from kdlab.report.summary import print_summary

__all__ = [
    "accuracy",
    "agreement",
    "expected_calibration_error",
    "latency_ms",
    "mean_kl",
    "predict",
    "REQUIRED_KEYS",
    "RESULTS_FILE",
    "divergence_warning",
    "evaluate",
    "finite_or_null",
    "read_results",
    "write_results",
    "print_summary",
]
