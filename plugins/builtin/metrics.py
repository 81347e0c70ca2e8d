"""The built-in metrics, registered as a plugin like any third party's (docs/architecture.md,
"Metrics"). Every registered metric is computed for every defense run and logged to MLflow.

- ``score``: the paper's Score, reconstructed (:func:`bdtool.core.experiment.evaluation.score`).
  The supplement itself notes that it does not see the loss of a whole class (§B.1).
- ``class_score``: Score × min(1, CTCA_after / CTCA_before) — zero when the target class is
  destroyed, equal to Score when the class keeps its accuracy. It multiplies rather than averages
  so that deleting the class can never be bought back by a high ACC (docs/method.md, "Honest
  scoring").
- ``der``: BackdoorBench's defense effectiveness rating (Wu et al., "BackdoorBench", NeurIPS 2022
  Datasets and Benchmarks), [max(0, ΔASR) − max(0, ΔACC) + 1] / 2 with Δ = before − after, in
  [0, 1]; shown ×100 so it can be set beside BackdoorBench's tables.
- ``asr``, ``acc``, ``ctca``, ``min_class_acc``: the evaluation's own numbers.
- ``reactivation``, ``reactivation_acc`` (opt-in: ``--metric reactivation``): the ASR and ACC after
  a copy of the defended model is fine-tuned on 5 poisoned (and 45 clean) samples of the unseen pool
  (``plugins/builtin/reactivation.py``; the retuning attack of Min et al., NeurIPS 2024).
"""

from __future__ import annotations

import math
from typing import Callable

import bdtool
from bdtool.core.experiment.evaluation import score
from bdtool.core.interfaces import Metric, MetricProbe
from bdtool.core.results import EvalResult
from bdtool.plugins.builtin.reactivation import (DEFAULT_CLEAN, DEFAULT_K, DEFAULT_STEPS, LR_FACTOR, reactivated_acc,
                                                  reactivated_asr)


def _need(reference: EvalResult | None, name: str) -> EvalResult:
    if reference is None:
        raise ValueError(f"{name} needs the victim's evaluation as reference")
    return reference


def score_range(reference: EvalResult | None) -> tuple[float, float] | None:
    """Score's values: 0 to 100·(1/ACC_before), since ACC after is at most 1. Above 100 only where
    the defense raised ACC (by at most the victim's error rate); the 892.6 of a NaN-weight victim
    (ACC_before 10 %) cannot arise any more, such victims being refused before any run."""
    if reference is None or not reference.acc > 0:
        return None
    return 0.0, 100.0 / reference.acc


class Score(Metric):
    name = "score"
    plot = "curve"
    measures_removal = True
    mlflow_scale = 0.01
    header = "Score"
    relative = True
    description = "paper's Score: 100·(ACC/ACC_before)·max(0, 1−ASR/ASR_before)"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return score(result, _need(reference, self.name))

    def value_range(self, reference: EvalResult | None = None) -> tuple[float, float] | None:
        return score_range(reference)


class ClassAwareScore(Metric):
    name = "class_score"
    measures_removal = True
    mlflow_scale = 0.01
    header = "ClassScore"
    relative = True
    description = "Score·min(1, CTCA/CTCA_before): 0 when the target class is destroyed"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        reference = _need(reference, self.name)
        base = score(result, reference)
        if math.isnan(base) or not reference.ctca > 0:
            return float("nan")
        return base * min(1.0, result.ctca / reference.ctca)

    def value_range(self, reference: EvalResult | None = None) -> tuple[float, float] | None:
        return score_range(reference)


class DefenseEffectivenessRating(Metric):
    name = "der"
    measures_removal = True
    header = "DER"
    relative = True
    percent = True
    description = "BackdoorBench's DER: [max(0, ΔASR) − max(0, ΔACC) + 1]/2, Δ = before − after"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        reference = _need(reference, self.name)
        d_asr = reference.asr - result.asr
        d_acc = reference.acc - result.acc
        return (max(0.0, d_asr) - max(0.0, d_acc) + 1.0) / 2.0


class EvaluationField(Metric):
    """A metric that is one number of the evaluation itself (``field`` of :class:`EvalResult`)."""

    field: str = ""
    percent = True

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return float(getattr(result, self.field))


class AttackSuccessRate(EvaluationField):
    name, header, field = "asr", "ASR", "asr"
    higher_is_better = False
    plot = "bar"
    description = "share of triggered non-target images classified as the target"


class Accuracy(EvaluationField):
    name, header, field = "acc", "ACC", "acc"
    plot = "bar+before"
    description = "clean accuracy on the evaluation half"


class CleanTargetClassAccuracy(EvaluationField):
    name, header, field = "ctca", "CTCA", "ctca"
    plot = "bar"
    description = "clean accuracy on target-class images"


class MinClassAccuracy(EvaluationField):
    name, header, field = "min_class_acc", "MinClass", "min_class_acc"
    description = "lowest per-class clean accuracy (catches a lost class)"


class MeasuredField(Metric):
    """A metric ``measure``d on the defended model (``needs_model``); ``compute`` reads the value
    the runner put into ``EvalResult.extra`` (NaN where there is none: the Before row)."""

    needs_model = True
    opt_in = True
    percent = True

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return float(result.extra.get(self.name, float("nan")))


class ReactivatedASR(MeasuredField):
    name, header = "reactivation", "ReASR"
    higher_is_better = False
    description = (f"opt-in: ASR after fine-tuning a copy of the defended model on {DEFAULT_K} poisoned + "
                   f"{DEFAULT_CLEAN} clean pool samples (victim's SGD at lr x {LR_FACTOR:g}, {DEFAULT_STEPS} steps); "
                   "read beside asr")

    def measure(self, model, probe: MetricProbe) -> float:
        return reactivated_asr(model, probe)


class ReactivatedAccuracy(MeasuredField):
    name, header = "reactivation_acc", "ReACC"
    description = "opt-in: clean accuracy after the same re-activation fine-tuning (a collapsed model shows here)"

    def measure(self, model, probe: MetricProbe) -> float:
        return reactivated_acc(model, probe)


BUILTIN_METRICS: tuple[type[Metric], ...] = (
    Score, ClassAwareScore, DefenseEffectivenessRating, AttackSuccessRate, Accuracy, CleanTargetClassAccuracy,
    MinClassAccuracy, ReactivatedASR, ReactivatedAccuracy,
)


for _order, _metric in enumerate(BUILTIN_METRICS):
    _metric.column_order = _order


@bdtool.hookimpl
def bdtool_register_metrics(register: Callable[..., None]) -> None:
    for metric in BUILTIN_METRICS:
        register(metric)
