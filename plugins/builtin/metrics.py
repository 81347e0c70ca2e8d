"""The built-in metrics, registered as a plugin like any third party's (docs/architecture.md).

The paper's Score is reconstructed in :func:`bdtool.core.experiment.evaluation.score` (docs/metrics
in README "Metrics"); the supplement notes its Score misses a lost class (§B.1), hence the minimum
class accuracy.
"""

from __future__ import annotations

from typing import Callable

import bdtool
from bdtool.core.experiment.evaluation import score
from bdtool.core.interfaces import Metric
from bdtool.core.results import EvalResult


class Accuracy(Metric):
    name = "acc"
    description = "clean accuracy on the evaluation half"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.acc


class AttackSuccessRate(Metric):
    name = "asr"
    higher_is_better = False
    description = "share of triggered non-target images classified as the target"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.asr


class CleanTargetClassAccuracy(Metric):
    name = "ctca"
    description = "clean accuracy on target-class images"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.ctca


class MinClassAccuracy(Metric):
    name = "min_class_acc"
    description = "lowest per-class clean accuracy (catches a lost class)"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.min_class_acc


class Score(Metric):
    name = "score"
    description = "100·(ACC/ACC_before)·max(0, 1−ASR/ASR_before)"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        if reference is None:
            raise ValueError("score needs the victim's evaluation as reference")
        return score(result, reference)


BUILTIN_METRICS: tuple[type[Metric], ...] = (Score, AttackSuccessRate, Accuracy, CleanTargetClassAccuracy, MinClassAccuracy)


@bdtool.hookimpl
def bdtool_register_metrics(register: Callable[..., None]) -> None:
    for metric in BUILTIN_METRICS:
        register(metric)
