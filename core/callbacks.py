"""The callbacks a defense, an attack or the training loop is handed: progress and metric logging
(a contract: it imports nothing). ``interfaces`` (``DefenseContext``) and ``compute/training``
both use them, so neither imports the other for them."""

from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[str, int, int], None]
"""progress(label, done, total)."""
MetricLogFn = Callable[[str, float, "int | None"], None]
"""log_metric(key, value, step)."""


def _no_progress(label: str, done: int, total: int) -> None:
    return None


def _no_metric(key: str, value: float, step: int | None = None) -> None:
    return None
