"""The callbacks a defense, an attack or the training loop is handed: progress and metric logging
(a contract: it imports nothing). ``interfaces`` (``DefenseContext``) and ``compute/training``
both use them, so neither imports the other for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ProgressFn = Callable[[str, int, int], None]
"""progress(label, done, total)."""
MetricLogFn = Callable[[str, float, "int | None"], None]
"""log_metric(key, value, step)."""


@dataclass(frozen=True)
class DetectionReport:
    """A defense's verdict on whether the model holds a backdoor, and where it points
    (docs/method.md, "Unknown backdoor"): the comparison logs it and the table shows it."""

    detected: bool
    target: int | None
    """The class the backdoor is suspected to point at (also when not flagged; None = no suspect)."""
    score: float
    """The evidence; flagged when it exceeds ``threshold``."""
    threshold: float


DetectionFn = Callable[[DetectionReport], None]
"""report_detection(report)."""


def _no_progress(label: str, done: int, total: int) -> None:
    return None


def _no_metric(key: str, value: float, step: int | None = None) -> None:
    return None


def _no_detection(report: DetectionReport) -> None:
    return None
